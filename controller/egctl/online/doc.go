// Package online holds the egctl commands that call the controller's
// admin API, one file each: apply, get, delete, agents and agent,
// webhooks, token and admin-token. (flows and alerts, online too, stay in
// controller/cmd/egctl.)
//
// It must not import agent/... nor any controller package but
// controller/apiclient and controller/egctl/...; it reaches the controller
// only through cli.RemoteFlags.
package online
