module github.com/postamt/postamt/services/calendar

go 1.26.0

replace (
	github.com/postamt/postamt/internal => ../../internal
	github.com/postamt/postamt/proto => ../../proto
)

require (
	github.com/emersion/go-ical v0.0.0-20250609112844-439c63cef608
	github.com/postamt/postamt/internal v0.0.0
	github.com/teambition/rrule-go v1.8.2
)
