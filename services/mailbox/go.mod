module github.com/postamt/postamt/services/mailbox

go 1.26
