package ical

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/teambition/rrule-go"
)

// isRRulePart reports whether k is an RFC 5545 rule part. rrule-go also accepts DTSTART and
// BYEASTER inside a rule, which no calendar client understands.
func isRRulePart(k string) bool {
	switch k {
	case "FREQ", "UNTIL", "COUNT", "INTERVAL", "BYSECOND", "BYMINUTE", "BYHOUR", "BYDAY",
		"BYMONTHDAY", "BYYEARDAY", "BYWEEKNO", "BYMONTH", "BYSETPOS", "WKST":
		return true
	}
	return false
}

// ValidateRRule checks a recurrence rule for an entry that starts at start (all-day when
// allDay) and returns it as it is written: upper case, without an "RRULE:" prefix.
//
// rrule-go parses the values and checks their ranges; on top of it the rule must follow RFC
// 5545 where rrule-go is lenient: no duplicate parts, not both COUNT and UNTIL, positive COUNT
// and INTERVAL, UNTIL a DATE for all-day entries and a UTC DATE-TIME for timed ones, not before
// the start, and no BYHOUR/BYMINUTE/BYSECOND on all-day entries. FREQ must be DAILY, WEEKLY,
// MONTHLY or YEARLY: Outlook, where the live agent writes, cannot store sub-daily recurrences.
func ValidateRRule(rule string, allDay bool, start time.Time) (string, error) {
	s := NormalRRule(rule)
	if s == "" {
		return "", fmt.Errorf("%w: empty", ErrInvalidRRule)
	}
	if i := strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("=;,+-", r))
	}); i >= 0 {
		return "", fmt.Errorf("%w: unexpected character %q", ErrInvalidRRule, s[i:i+1])
	}
	parts := make(map[string]string)
	for _, p := range strings.Split(s, ";") {
		k, v, ok := strings.Cut(p, "=")
		if !ok || v == "" {
			return "", fmt.Errorf("%w: %q is not NAME=VALUE", ErrInvalidRRule, p)
		}
		if !isRRulePart(k) {
			return "", fmt.Errorf("%w: unknown part %s", ErrInvalidRRule, k)
		}
		if _, dup := parts[k]; dup {
			return "", fmt.Errorf("%w: %s given twice", ErrInvalidRRule, k)
		}
		parts[k] = v
	}
	switch parts["FREQ"] {
	case "DAILY", "WEEKLY", "MONTHLY", "YEARLY":
	case "":
		return "", fmt.Errorf("%w: FREQ is required", ErrInvalidRRule)
	default:
		return "", fmt.Errorf("%w: FREQ=%s is not supported (DAILY, WEEKLY, MONTHLY or YEARLY)", ErrInvalidRRule, parts["FREQ"])
	}
	if _, ok := parts["COUNT"]; ok {
		if _, ok := parts["UNTIL"]; ok {
			return "", fmt.Errorf("%w: COUNT and UNTIL exclude each other", ErrInvalidRRule)
		}
	}
	for _, k := range []string{"COUNT", "INTERVAL"} {
		if v, ok := parts[k]; ok {
			if n, err := strconv.Atoi(v); err != nil || n < 1 {
				return "", fmt.Errorf("%w: %s=%s is not a positive number", ErrInvalidRRule, k, v)
			}
		}
	}
	if v, ok := parts["BYDAY"]; ok {
		if err := checkByDayOrdinals(v, parts); err != nil {
			return "", err
		}
	}
	if allDay {
		for _, k := range []string{"BYHOUR", "BYMINUTE", "BYSECOND"} {
			if _, ok := parts[k]; ok {
				return "", fmt.Errorf("%w: %s on an all-day entry", ErrInvalidRRule, k)
			}
		}
	}
	if v, ok := parts["UNTIL"]; ok {
		until, err := parseUntil(v, allDay)
		if err != nil {
			return "", err
		}
		first := start
		if allDay {
			first = DateOf(start).midnight()
		}
		if until.Before(first) {
			return "", fmt.Errorf("%w: UNTIL %s is before the start", ErrInvalidRRule, v)
		}
	}
	opt, err := rrule.StrToROption(s)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalidRRule, err)
	}
	opt.Dtstart = start
	if _, err := rrule.NewRRule(*opt); err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalidRRule, err)
	}
	return s, nil
}

// NormalRRule is the form of rule that ValidateRRule returns for a valid rule, without checking
// it: upper case (RFC 5545's names and values are case-insensitive), without surrounding space
// or an "RRULE:" prefix. Rules written alike in this form are the same rule.
func NormalRRule(rule string) string {
	return strings.TrimPrefix(strings.ToUpper(strings.TrimSpace(rule)), "RRULE:")
}

// checkByDayOrdinals checks the ordinals of BYDAY ("2MO", "-1FR") as RFC 5545 §3.3.10 allows
// them: only in MONTHLY and YEARLY rules (not beside BYWEEKNO), 1 to 5 weeks of a month (MONTHLY,
// or YEARLY with BYMONTH) or 1 to 53 of a year, counted from the start or, negative, the end.
// rrule-go takes any number and then indexes past its tables: FREQ=MONTHLY;BYDAY=8FR panicked
// when the series was expanded.
func checkByDayOrdinals(v string, parts map[string]string) error {
	limit := 0
	switch {
	case parts["FREQ"] == "MONTHLY", parts["FREQ"] == "YEARLY" && parts["BYMONTH"] != "":
		limit = 5
	case parts["FREQ"] == "YEARLY" && parts["BYWEEKNO"] == "":
		limit = 53
	}
	for _, d := range strings.Split(v, ",") {
		num := strings.TrimRight(d, "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
		if num == "" {
			continue
		}
		n, err := strconv.Atoi(num)
		switch {
		case err != nil:
			return fmt.Errorf("%w: BYDAY=%s is not a weekday", ErrInvalidRRule, d)
		case limit == 0:
			return fmt.Errorf("%w: BYDAY=%s: a numbered weekday needs FREQ=MONTHLY or YEARLY (without BYWEEKNO)", ErrInvalidRRule, d)
		case n == 0 || n < -limit || n > limit:
			return fmt.Errorf("%w: BYDAY=%s: the number must be 1 to %d or -1 to -%d", ErrInvalidRRule, d, limit, limit)
		}
	}
	return nil
}

// parseUntil parses UNTIL in the form RFC 5545 demands for the start's value type: a DATE for
// all-day entries, a UTC DATE-TIME for entries with a TZID.
func parseUntil(v string, allDay bool) (time.Time, error) {
	layout, want := "20060102T150405Z", "a UTC date-time such as 20261231T235959Z"
	if allDay {
		layout, want = "20060102", "a date such as 20261231"
	}
	t, err := time.Parse(layout, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: UNTIL=%s must be %s", ErrInvalidRRule, v, want)
	}
	return t, nil
}

// maxSeriesCount bounds the occurrences SeriesEnd expands for a COUNT rule; beyond it the series
// is treated as open-ended (listing then errs on the side of showing it).
const maxSeriesCount = 10_000

// SeriesEnd returns when the last occurrence of a validated rule starts, so that a series can be
// found by the ranges it reaches: UNTIL's instant, the last of COUNT occurrences, or open-ended
// (ok false) when the rule has neither.
//
// The rule is expanded on the clock of loc, the entry's zone (UTC for all-day entries, whose
// start is midnight UTC of their day), as ValidateRRule and every calendar expand it: BYDAY,
// BYMONTHDAY and the like name local days, so the same rule from the same instant gives other
// occurrences in UTC than in Pacific/Auckland. A nil loc is an error, not UTC, so no caller
// forgets the zone.
func SeriesEnd(rule string, start time.Time, loc *time.Location) (last time.Time, ok bool, err error) {
	if loc == nil {
		return time.Time{}, false, errors.New("ical: SeriesEnd needs the entry's time zone")
	}
	start = start.In(loc)
	opt, err := rrule.StrToROption(NormalRRule(rule))
	if err != nil {
		return time.Time{}, false, fmt.Errorf("%w: %w", ErrInvalidRRule, err)
	}
	switch {
	case !opt.Until.IsZero():
		return opt.Until, true, nil
	case opt.Count > 0 && opt.Count <= maxSeriesCount:
		opt.Dtstart = start
		r, err := rrule.NewRRule(*opt)
		if err != nil {
			return time.Time{}, false, fmt.Errorf("%w: %w", ErrInvalidRRule, err)
		}
		all := r.All()
		if len(all) == 0 {
			return start, true, nil
		}
		return all[len(all)-1], true, nil
	}
	return time.Time{}, false, nil
}
