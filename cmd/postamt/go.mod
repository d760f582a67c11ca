module github.com/postamt/postamt/cmd/postamt

go 1.26
