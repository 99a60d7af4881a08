package cli

// count is the name this package's tests use.
var count = Count
