package deploy

import (
	"errors"

	kjson "sigs.k8s.io/json"
)

// unmarshalStrict decodes JSON as the API server does in strict field validation: field names
// case-sensitive, unknown and duplicate fields errors.
func unmarshalStrict(js []byte, v any) error {
	strictErrs, err := kjson.UnmarshalStrict(js, v, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}
