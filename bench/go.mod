module github.com/postamt/postamt/bench

go 1.26.0

require (
	github.com/postamt/postamt/internal v0.0.0
	github.com/postamt/postamt/proto v0.0.0
	github.com/postamt/postamt/services/mailbox v0.0.0
)

replace (
	github.com/postamt/postamt/internal => ../internal
	github.com/postamt/postamt/proto => ../proto
	github.com/postamt/postamt/services/mailbox => ../services/mailbox
)
