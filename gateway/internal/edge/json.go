package edge

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// JSON is the HTTP side's JSON marshaler: grpc-gateway's protojson one, strict where grpc-gateway's
// default is lenient. An unknown field or an unknown enum value (by name or by number) in a body
// is an error naming the field, because a typo dropped silently ("all_user": true, a right
// "RIGHT_SEND_AS_TYPO") makes a request that succeeds and does something else. Answers keep
// grpc-gateway's default form (unset fields included).
type JSON struct {
	runtime.JSONPb
}

// NewJSON returns the strict marshaler.
func NewJSON() *JSON {
	return &JSON{JSONPb: runtime.JSONPb{
		MarshalOptions:   protojson.MarshalOptions{EmitUnpopulated: true},
		UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
	}}
}

// NewDecoder reads one JSON value from r per Decode, as grpc-gateway's decoder does (an empty
// body is io.EOF, which the generated handlers accept as "no body").
func (j *JSON) NewDecoder(r io.Reader) runtime.Decoder {
	d := json.NewDecoder(r)
	return runtime.DecoderFunc(func(v any) error {
		var raw json.RawMessage
		if err := d.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return err // unwrapped: the generated handlers look for io.EOF
			}
			return notJSON(err)
		}
		return j.Unmarshal(raw, v)
	})
}

// Unmarshal decodes data into v, a message or a pointer to a message field (the body of a
// route with `body: "field"`); other targets (scalar or list bodies) decode as grpc-gateway's do.
func (j *JSON) Unmarshal(data []byte, v any) error {
	m, ok := messageOf(v)
	if !ok {
		if err := j.JSONPb.Unmarshal(data, v); err != nil {
			return fmt.Errorf("the body is not valid JSON for this request: %w", err)
		}
		return nil
	}
	if bytes.Equal(bytes.TrimSpace(data), []byte("null")) {
		return nil
	}
	if err := j.UnmarshalOptions.Unmarshal(data, m); err != nil {
		if fe := findBadJSON(data, m.ProtoReflect().Descriptor()); fe != nil {
			return fe
		}
		// No one field is to blame (a repeated key, invalid UTF-8): protojson's own words, with
		// the position, name the body.
		return &bodyFieldError{desc: "not valid JSON for this request " + protojsonWords(err)}
	}
	// protojson takes any number for an open enum; a number the enum does not define is as much a
	// typo as an unknown name.
	if fe := findUnknownEnumNumber(m.ProtoReflect(), ""); fe != nil {
		return fe
	}
	return nil
}

var protoMessageType = reflect.TypeFor[proto.Message]()

// messageOf returns v as a message: v itself, or the message a **T points at (allocated when nil).
func messageOf(v any) (proto.Message, bool) {
	if m, ok := v.(proto.Message); ok {
		return m, true
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() || rv.Elem().Kind() != reflect.Pointer || !rv.Elem().Type().Implements(protoMessageType) {
		return nil, false
	}
	if rv.Elem().IsNil() {
		rv.Elem().Set(reflect.New(rv.Elem().Type().Elem()))
	}
	return rv.Elem().Interface().(proto.Message), true
}

// bodyFieldPrefix starts the text of a bodyFieldError. grpc-gateway's generated handlers turn a
// decoder's error into an InvalidArgument with the error's text only, so the error handler finds
// the field again by this prefix (parseBodyFieldError) and makes it a field violation.
const bodyFieldPrefix = "body field "

// bodyFieldError is a field of the JSON body the request's message cannot take.
type bodyFieldError struct {
	// path is the field's path in the decoded message: proto names, then the unknown key as the
	// caller wrote it; list elements as [i], map entries as [key]. Empty: the whole body.
	path string
	desc string
}

func (e *bodyFieldError) Error() string {
	return bodyFieldPrefix + strconv.Quote(e.path) + ": " + e.desc
}

// parseBodyFieldError reads a bodyFieldError back from a status message.
func parseBodyFieldError(msg string) (path, desc string, ok bool) {
	rest, ok := strings.CutPrefix(msg, bodyFieldPrefix)
	if !ok {
		return "", "", false
	}
	quoted, err := strconv.QuotedPrefix(rest)
	if err != nil {
		return "", "", false
	}
	path, err = strconv.Unquote(quoted)
	if err != nil {
		return "", "", false
	}
	desc, ok = strings.CutPrefix(rest[len(quoted):], ": ")
	return path, desc, ok
}

// findBadJSON names the first unknown field or unknown enum name in data (keys in sorted order),
// else the first value of a wrong type (findBadValue), once protojson refused it; nil when the
// problem is another one (syntax, a repeated key).
func findBadJSON(data []byte, md protoreflect.MessageDescriptor) *bodyFieldError {
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil //nolint:nilerr // a syntax error is "another problem": protojson's message stands
	}
	if fe := walkMessage(md, v, ""); fe != nil {
		return fe
	}
	return findBadValue(md, v, "")
}

// protojsonPosRE matches protojson's position, "(line 1:17): ", in its error text.
var protojsonPosRE = regexp.MustCompile(`\s*\(line (\d+):(\d+)\):?\s*`)

// protojsonWords is protojson's error text without its package prefix, the position first:
// "proto: (line 1:17): duplicate field "to"" is `at line 1, column 17: duplicate field "to"`.
func protojsonWords(err error) string {
	msg := strings.TrimLeft(strings.TrimPrefix(err.Error(), "proto:"), " \u00a0")
	if m := protojsonPosRE.FindStringSubmatchIndex(msg); m != nil {
		rest := strings.TrimSpace(msg[:m[0]] + ": " + msg[m[1]:])
		return "at line " + msg[m[2]:m[3]] + ", column " + msg[m[4]:m[5]] + ": " + strings.TrimPrefix(rest, ": ")
	}
	return "(" + msg + ")"
}

// notJSON is the error of a body that is not JSON at all, naming the body; the decoder's
// description is plain enough, its offset is added.
func notJSON(err error) *bodyFieldError {
	if se := (*json.SyntaxError)(nil); errors.As(err, &se) {
		return &bodyFieldError{desc: fmt.Sprintf("not valid JSON: %s (at byte %d)", se.Error(), se.Offset)}
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return &bodyFieldError{desc: "not valid JSON: it ends too early"}
	}
	return &bodyFieldError{desc: "not valid JSON: " + err.Error()}
}

func joinPath(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func walkMessage(md protoreflect.MessageDescriptor, v any, path string) *bodyFieldError {
	return eachField(md, v, func(k string, fd protoreflect.FieldDescriptor, x any) *bodyFieldError {
		if fd == nil {
			if strings.HasPrefix(k, "[") {
				return nil // an extension; protojson has judged it
			}
			return &bodyFieldError{path: joinPath(path, k), desc: "unknown field"}
		}
		return walkField(fd, x, joinPath(path, string(fd.Name())))
	})
}

// eachField calls fn for each key of the JSON object v, a message of type md, in key order, with
// the key's field (by JSON or proto name; nil when md has none) and value, until fn returns an
// error. Well-known types, which have JSON forms of their own (strings, any value), and values
// that are not objects have no fields to walk.
func eachField(md protoreflect.MessageDescriptor, v any, fn func(k string, fd protoreflect.FieldDescriptor, x any) *bodyFieldError) *bodyFieldError {
	obj, ok := v.(map[string]any)
	if !ok || strings.HasPrefix(string(md.FullName()), "google.protobuf.") {
		return nil
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fd := md.Fields().ByJSONName(k)
		if fd == nil {
			fd = md.Fields().ByTextName(k)
		}
		if fe := fn(k, fd, obj[k]); fe != nil {
			return fe
		}
	}
	return nil
}

func walkField(fd protoreflect.FieldDescriptor, v any, path string) *bodyFieldError {
	switch {
	case v == nil:
		return nil
	case fd.IsMap():
		obj, _ := v.(map[string]any)
		for k, x := range obj {
			if fe := walkValue(fd.MapValue(), x, path+"["+k+"]"); fe != nil {
				return fe
			}
		}
	case fd.IsList():
		list, _ := v.([]any)
		for i, x := range list {
			if fe := walkValue(fd, x, path+"["+strconv.Itoa(i)+"]"); fe != nil {
				return fe
			}
		}
	default:
		return walkValue(fd, v, path)
	}
	return nil
}

func walkValue(fd protoreflect.FieldDescriptor, v any, path string) *bodyFieldError {
	switch fd.Kind() {
	case protoreflect.EnumKind:
		ed := fd.Enum()
		if ed.FullName() == "google.protobuf.NullValue" {
			return nil
		}
		switch x := v.(type) {
		case string:
			if ed.Values().ByName(protoreflect.Name(x)) == nil {
				return unknownEnum(ed, path, strconv.Quote(x))
			}
		case json.Number:
			if n, err := strconv.ParseInt(string(x), 10, 32); err != nil || ed.Values().ByNumber(protoreflect.EnumNumber(n)) == nil {
				return unknownEnum(ed, path, string(x))
			}
		}
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return walkMessage(fd.Message(), v, path)
	}
	return nil
}

func unknownEnum(ed protoreflect.EnumDescriptor, path, value string) *bodyFieldError {
	return &bodyFieldError{path: path, desc: fmt.Sprintf("unknown value %s of %s", value, ed.Name())}
}

// findUnknownEnumNumber names the first enum field of m (in field-number order) holding a number
// its enum does not define.
func findUnknownEnumNumber(m protoreflect.Message, path string) *bodyFieldError {
	var found *bodyFieldError
	check := func(fd protoreflect.FieldDescriptor, v protoreflect.Value, p string) {
		switch fd.Kind() {
		case protoreflect.EnumKind:
			if fd.Enum().Values().ByNumber(v.Enum()) == nil {
				found = unknownEnum(fd.Enum(), p, strconv.Itoa(int(v.Enum())))
			}
		case protoreflect.MessageKind, protoreflect.GroupKind:
			found = findUnknownEnumNumber(v.Message(), p)
		}
	}
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if !m.Has(fd) {
			continue
		}
		p := joinPath(path, string(fd.Name()))
		v := m.Get(fd)
		switch {
		case fd.IsList():
			for j := range v.List().Len() {
				if check(fd, v.List().Get(j), p+"["+strconv.Itoa(j)+"]"); found != nil {
					return found
				}
			}
		case fd.IsMap():
			v.Map().Range(func(k protoreflect.MapKey, x protoreflect.Value) bool {
				check(fd.MapValue(), x, p+"["+k.String()+"]")
				return found == nil
			})
		default:
			check(fd, v, p)
		}
		if found != nil {
			return found
		}
	}
	return nil
}
