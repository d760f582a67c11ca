package caldav

import (
	"bytes"
	"context"
	"encoding/xml"
	"fmt"
	"net/http"
	"strings"
)

// multistatus is the part of a WebDAV 207 Multi-Status answer (RFC 4918 §14.16) we read.
type multistatus struct {
	XMLName   xml.Name `xml:"DAV: multistatus"`
	Responses []struct {
		Href      string `xml:"DAV: href"`
		Propstats []struct {
			Status string `xml:"DAV: status"`
			Prop   struct {
				ResourceType struct {
					Collection *struct{} `xml:"DAV: collection"`
					Calendar   *struct{} `xml:"urn:ietf:params:xml:ns:caldav calendar"`
				} `xml:"DAV: resourcetype"`
				GetETag string `xml:"DAV: getetag"`
			} `xml:"DAV: prop"`
		} `xml:"DAV: propstat"`
	} `xml:"DAV: response"`
}

// propfind asks for props of target with Depth 0 and returns the first response's successful
// propstat; found is false on 404.
func (c *Client) propfind(ctx context.Context, target string, props string) (ms *multistatus, found bool, err error) {
	body := []byte(`<?xml version="1.0" encoding="utf-8"?>` +
		`<d:propfind xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav"><d:prop>` + props + `</d:prop></d:propfind>`)
	resp, err := c.do(ctx, "PROPFIND", target, http.Header{
		"Depth":        {"0"},
		"Content-Type": {"application/xml; charset=utf-8"},
	}, body)
	if err != nil {
		return nil, false, err
	}
	switch resp.status {
	case http.StatusMultiStatus:
	case http.StatusNotFound:
		return nil, false, nil
	default:
		return nil, false, statusError("PROPFIND", target, resp)
	}
	ms = new(multistatus)
	if err := xml.NewDecoder(bytes.NewReader(resp.body)).Decode(ms); err != nil {
		return nil, false, &Error{Method: "PROPFIND", URL: target, StatusCode: resp.status,
			Err: fmt.Errorf("malformed multistatus: %w", err), class: ErrRejected}
	}
	return ms, true, nil
}

// isCalendar reports whether some successful propstat has a calendar resourcetype.
func (ms *multistatus) isCalendar() bool {
	for _, r := range ms.Responses {
		for _, ps := range r.Propstats {
			if ps.Prop.ResourceType.Calendar != nil {
				return true
			}
		}
	}
	return false
}

// etag is the first getetag in the answer, without the white space around it that an indented
// answer has (<d:getetag>\n  "e-1"\n</d:getetag>), which If-Match cannot carry.
func (ms *multistatus) etag() string {
	for _, r := range ms.Responses {
		for _, ps := range r.Propstats {
			if e := strings.TrimSpace(ps.Prop.GetETag); e != "" {
				return e
			}
		}
	}
	return ""
}

// EnsureCalendar creates the calendar collection with MKCALENDAR (RFC 4791 §5.3.1) unless it
// exists. It fails with ErrRejected when something that is not a calendar is at the URL.
// Create and Update call it themselves when the server reports the collection missing, so a
// caller needs it only to check the configuration up front.
func (c *Client) EnsureCalendar(ctx context.Context) error {
	target := c.base.String()
	ms, found, err := c.propfind(ctx, target, `<d:resourcetype/>`)
	if err != nil {
		return err
	}
	if found {
		if !ms.isCalendar() {
			return &Error{Method: "PROPFIND", URL: target, StatusCode: http.StatusMultiStatus,
				Err: fmt.Errorf("the collection exists but is not a calendar"), class: ErrRejected}
		}
		return nil
	}
	var name bytes.Buffer
	_ = xml.EscapeText(&name, []byte(c.displayName)) // writes to a buffer: cannot fail
	body := []byte(`<?xml version="1.0" encoding="utf-8"?>` +
		`<c:mkcalendar xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav"><d:set><d:prop>` +
		`<d:displayname>` + name.String() + `</d:displayname>` +
		`<c:supported-calendar-component-set><c:comp name="VEVENT"/></c:supported-calendar-component-set>` +
		`</d:prop></d:set></c:mkcalendar>`)
	resp, err := c.do(ctx, "MKCALENDAR", target, http.Header{"Content-Type": {"application/xml; charset=utf-8"}}, body)
	if err != nil {
		return err
	}
	switch resp.status {
	case http.StatusCreated, http.StatusOK, http.StatusNoContent:
		return nil
	case http.StatusMethodNotAllowed:
		// Someone created it since our PROPFIND (RFC 4791: 405 when the resource exists).
		if ms, found, err := c.propfind(ctx, target, `<d:resourcetype/>`); err == nil && found && ms.isCalendar() {
			return nil
		}
	}
	return statusError("MKCALENDAR", target, resp)
}

// propETag reads an object's ETag with PROPFIND getetag, for servers that send none with GET.
func (c *Client) propETag(ctx context.Context, target string) (string, error) {
	ms, found, err := c.propfind(ctx, target, `<d:getetag/>`)
	if err != nil {
		return "", err
	}
	if !found {
		return "", &Error{Method: "PROPFIND", URL: target, StatusCode: http.StatusNotFound, class: ErrNotFound}
	}
	etag := ms.etag()
	if strings.ContainsFunc(etag, func(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }) {
		// A line break in it would make every conditional write fail in net/http, retried for
		// ever; the server's answer is at fault.
		return "", &Error{Method: "PROPFIND", URL: target, StatusCode: http.StatusMultiStatus,
			Err: fmt.Errorf("an ETag with control characters (%q), which If-Match cannot carry", etag), class: ErrRejected}
	}
	return etag, nil
}
