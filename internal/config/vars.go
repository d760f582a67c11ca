package config

import (
	"fmt"
	"reflect"
	"strings"
)

// Var documents one environment variable, as read from a config struct's tags.
type Var struct {
	// Name is the environment variable, prefix included.
	Name string
	// Default is the value used when the variable is unset; empty when there is none.
	Default string
	// Description is the `desc` tag: what the variable does and which values it takes.
	Description string
	// Required marks variables without which the process does not start.
	Required bool
}

// Vars lists the variables of a config struct (pointer or value) in field order, recursing into
// embedded and nested structs (honouring envconfig's `prefix=`), so the documentation table is
// generated from the same tags that are parsed. It panics if v is not a struct: that is a
// programming error found by the first test that calls it.
func Vars(v any) []Var {
	t := reflect.TypeOf(v)
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() != reflect.Struct {
		panic(fmt.Sprintf("config.Vars: want a struct, got %T", v))
	}
	return appendVars(nil, t, "")
}

func appendVars(out []Var, t reflect.Type, prefix string) []Var {
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() && !f.Anonymous {
			continue
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		tag := f.Tag.Get("env")
		if tag == "-" {
			continue
		}
		name, opts := parseTag(tag)
		if name == "" {
			// No variable of its own: a nested struct whose fields carry the tags.
			if ft.Kind() == reflect.Struct {
				out = appendVars(out, ft, prefix+opts.prefix)
			}
			continue
		}
		out = append(out, Var{
			Name:        prefix + name,
			Default:     opts.def,
			Description: f.Tag.Get("desc"),
			Required:    opts.required,
		})
	}
	return out
}

type tagOpts struct {
	def, prefix string
	required    bool
}

// parseTag reads the parts of an envconfig tag that documentation needs. As in envconfig, a
// default takes the rest of the tag, commas included.
func parseTag(tag string) (string, tagOpts) {
	var o tagOpts
	name, rest, _ := strings.Cut(tag, ",")
	for rest != "" {
		var seg string
		seg, rest, _ = strings.Cut(rest, ",")
		trimmed := strings.TrimSpace(seg)
		switch {
		case strings.HasPrefix(strings.ToLower(trimmed), "default="):
			o.def = trimmed[len("default="):]
			if rest != "" {
				o.def += "," + rest
			}
			rest = ""
		case strings.HasPrefix(strings.ToLower(trimmed), "prefix="):
			o.prefix = trimmed[len("prefix="):]
		case strings.EqualFold(trimmed, "required"):
			o.required = true
		}
	}
	return strings.TrimSpace(name), o
}

// MarkdownTable renders vars as a Markdown table (variable, default, meaning) for the operations
// documentation; `postamt config` prints it and a test keeps docs/configuration.md in step.
func MarkdownTable(vars []Var) string {
	var b strings.Builder
	b.WriteString("| variable | default | meaning |\n|---|---|---|\n")
	for _, v := range vars {
		def := "(empty)"
		switch {
		case v.Required:
			def = "(required)"
		case v.Default != "":
			def = "`" + v.Default + "`"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", v.Name, def, strings.ReplaceAll(v.Description, "|", `\|`))
	}
	return b.String()
}
