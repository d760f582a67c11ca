package edge

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/grpc-ecosystem/grpc-gateway/v2/utilities"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/postamt/postamt/internal/errs"
)

// Malformed values. grpc-gateway's query parser and protojson refuse a value that does not parse
// as its field's type (?pageSize=abc, "startTime": "nope"), and the generated handlers make an
// InvalidArgument of the error's text alone: Go parser internals (strconv.ParseInt, a time
// layout, a JSON position) and no BadRequest. The edge finds the field itself, by asking the same
// parser about one field at a time, and says what the field takes in plain words.

// timestampRule is what a Timestamp takes, in the query and in a body.
const timestampRule = "not a valid timestamp (RFC 3339, e.g. 2026-12-08T09:00:00Z)"

// checkQueryValues records a violation for each value of the known query key that grpc-gateway's
// query parser (runtime.PopulateQueryParameters, the one the generated handlers call) would refuse;
// path is the key's proto path and fd its field. A singular field given more than once is refused
// too. Elements of a repeated field are named path[i].
func checkQueryValues(input protoreflect.MessageDescriptor, key, path string, fd protoreflect.FieldDescriptor, values []string, v *errs.Violations) {
	if !fd.IsList() && !fd.IsMap() && len(values) > 1 {
		v.Addf(path, "given %d times; it takes one value", len(values))
		return
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(input.FullName())
	if err != nil {
		return // not a generated type: the handler's own error stands
	}
	parses := func(vals ...string) error {
		return runtime.PopulateQueryParameters(mt.New().Interface(), url.Values{key: vals}, utilities.NewDoubleArray(nil))
	}
	switch {
	case fd.IsMap():
		if err := parses(values...); err != nil {
			v.Add(path, describe(fd.MapValue(), strings.Join(values, ","), err, false))
		}
	case fd.IsList():
		for i, s := range values {
			if err := parses(s); err != nil {
				v.Add(path+"["+strconv.Itoa(i)+"]", describe(fd, s, err, false))
			}
		}
	default:
		if err := parses(values...); err != nil {
			v.Add(path, describe(fd, values[0], err, false))
		}
	}
}

// describe says in plain words what fd takes, for a value s (the query text, or the JSON text of a
// body value) that did not parse with err; inBody selects the JSON forms.
func describe(fd protoreflect.FieldDescriptor, s string, err error, inBody bool) string {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return "not true or false"
	case protoreflect.EnumKind:
		if inBody {
			return "not a value of " + string(fd.Enum().Name()) + " (a name or a number)"
		}
		return fmt.Sprintf("unknown value %q of %s", s, fd.Enum().Name())
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return describeInt(s, err, inBody, "a 32-bit integer")
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return describeInt(s, err, inBody, "a 64-bit integer")
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return describeUint(s, err, inBody, "an unsigned 32-bit integer")
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return describeUint(s, err, inBody, "an unsigned 64-bit integer")
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		if errors.Is(err, strconv.ErrRange) {
			return "out of range"
		}
		return "not a number"
	case protoreflect.StringKind:
		return "not a string"
	case protoreflect.BytesKind:
		return "not base64"
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return describeMessage(fd.Message(), s, err, inBody)
	}
	return "not a valid value for this field"
}

func describeInt(s string, err error, inBody bool, what string) string {
	if errors.Is(err, strconv.ErrRange) || inBody && integral(s) {
		return "out of range for " + what
	}
	return "not an integer"
}

func describeUint(s string, err error, inBody bool, what string) string {
	if errors.Is(err, strconv.ErrRange) || inBody && integral(s) && !strings.HasPrefix(strings.Trim(s, `"`), "-") {
		return "out of range for " + what
	}
	return "not a non-negative integer"
}

// integral tells whether s, a JSON number or a quoted one, is a whole number (protojson takes
// 1e3 and "12" for an integer field), so that a refusal was its range.
func integral(s string) bool {
	f, ok := new(big.Float).SetString(strings.Trim(s, `"`))
	return ok && f.IsInt()
}

func describeMessage(md protoreflect.MessageDescriptor, s string, err error, inBody bool) string {
	switch md.FullName() {
	case "google.protobuf.Timestamp":
		return timestampRule
	case "google.protobuf.Duration":
		if inBody {
			return "not a valid duration (seconds with an s suffix, e.g. 90s or 1.5s)"
		}
		return "not a valid duration (e.g. 90s or 1h30m)"
	case "google.protobuf.FieldMask":
		return "not a field mask (field paths separated by commas)"
	case "google.protobuf.Struct":
		return "not a JSON object"
	case "google.protobuf.ListValue":
		return "not a JSON array"
	case "google.protobuf.Value":
		return "not a JSON value"
	case "google.protobuf.Empty":
		if inBody {
			return "not an empty JSON object"
		}
		return `takes no value (empty or "{}")`
	case "google.protobuf.DoubleValue", "google.protobuf.FloatValue", "google.protobuf.Int64Value",
		"google.protobuf.UInt64Value", "google.protobuf.Int32Value", "google.protobuf.UInt32Value",
		"google.protobuf.BoolValue", "google.protobuf.StringValue", "google.protobuf.BytesValue":
		return describe(md.Fields().ByName("value"), s, err, inBody)
	}
	if inBody {
		return "not a JSON object of " + string(md.Name())
	}
	return "a message: give its fields as name.field=value"
}

// findBadValue names the first value of a JSON body (keys in sorted order) that protojson refuses
// for its field's type, once the body has no unknown field or enum value: it unmarshals each field
// alone into an empty message of its type, descending into the message, list or map that holds the
// refused value. nil when every field parses alone (the problem is of the whole body, such as a
// repeated key).
func findBadValue(md protoreflect.MessageDescriptor, v any, path string) *bodyFieldError {
	return eachField(md, v, func(k string, fd protoreflect.FieldDescriptor, x any) *bodyFieldError {
		if fd == nil || fieldParses(md, k, x) {
			return nil
		}
		p := joinPath(path, string(fd.Name()))
		if fe := badFieldValue(md, k, fd, x, p); fe != nil {
			return fe
		}
		return &bodyFieldError{path: p, desc: "not a valid value for this field"}
	})
}

// badFieldValue finds the refused value within the value x of field fd, written as key k of a
// message of type md.
func badFieldValue(md protoreflect.MessageDescriptor, k string, fd protoreflect.FieldDescriptor, x any, path string) *bodyFieldError {
	switch {
	case fd.IsList():
		list, ok := x.([]any)
		if !ok {
			return &bodyFieldError{path: path, desc: "not a JSON array"}
		}
		for i, e := range list {
			if !fieldParses(md, k, []any{e}) {
				return badValue(fd, e, path+"["+strconv.Itoa(i)+"]")
			}
		}
	case fd.IsMap():
		entries, ok := x.(map[string]any)
		if !ok {
			return &bodyFieldError{path: path, desc: "not a JSON object"}
		}
		names := make([]string, 0, len(entries))
		for name := range entries {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			if fieldParses(md, k, map[string]any{name: entries[name]}) {
				continue
			}
			if fd.MapKey().Kind() != protoreflect.StringKind {
				return &bodyFieldError{path: path + "[" + name + "]", desc: "not a valid map entry (key or value)"}
			}
			return badValue(fd.MapValue(), entries[name], path+"["+name+"]")
		}
	default:
		return badValue(fd, x, path)
	}
	return nil
}

// badValue describes the refused value x of fd (a singular field, a list element or a map value).
func badValue(fd protoreflect.FieldDescriptor, x any, path string) *bodyFieldError {
	if md := fd.Message(); md != nil && !strings.HasPrefix(string(md.FullName()), "google.protobuf.") {
		if _, ok := x.(map[string]any); !ok {
			return &bodyFieldError{path: path, desc: "not a JSON object"}
		}
		if fe := findBadValue(md, x, path); fe != nil {
			return fe
		}
		return &bodyFieldError{path: path, desc: "not a valid value for this field"}
	}
	text, _ := json.Marshal(x)
	return &bodyFieldError{path: path, desc: describe(fd, string(text), nil, true)}
}

// fieldParses tells whether protojson takes {k: x} as a message of type md.
func fieldParses(md protoreflect.MessageDescriptor, k string, x any) bool {
	data, err := json.Marshal(map[string]any{k: x})
	if err != nil {
		return false
	}
	return protojson.Unmarshal(data, dynamicpb.NewMessage(md)) == nil
}
