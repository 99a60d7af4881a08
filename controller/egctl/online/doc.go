// Package online holds the egctl commands that call the controller's
// admin API, one file each: apply, get, delete, agents and agent,
// webhooks, flows, recommend, alerts and alert, token and admin-token.
//
// It must not import agent/... nor any controller package but
// controller/apiclient and controller/egctl/...; it reaches the controller
// only through cli.RemoteFlags.
package online
