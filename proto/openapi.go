// Package proto holds the suite's API: the protos under postamt/ and the code generated from them
// under gen/. This file hands the merged OpenAPI document to the gateway, which serves it, so the
// document served is always the one generated from the protos of the same build.
package proto

import _ "embed"

//go:embed gen/openapi/postamt.swagger.json
var openAPI []byte

// OpenAPI returns the merged OpenAPI (Swagger 2.0) document of every service's HTTP mapping. The
// caller must not modify it.
func OpenAPI() []byte { return openAPI }
