// Package offline holds the egctl commands that work on policy files
// without a controller: validate, compile, explain and import (one file
// each; import's translation is controller/egctl/importer; explain --live
// asks the controller instead, through cli.RemoteFlags),
// loading the files (load.go), and the control-plane reachability warnings
// (controlplane.go: the --controller-address flag and the check that a
// host-mode workload's policy lets its node reach the controller, which
// validate runs on the files and online's apply on the controller's rule
// sets).
//
// It must not import agent/... nor any controller package but
// controller/apiclient, controller/egctl/cli and controller/egctl/importer; controller/egctl/online
// imports it, never the other way.
package offline
