package restapi

// Routes returns every /api/v1 route's pattern, and whether it is public
// (no admin credential), for the tests outside the package.
func Routes() (patterns []string, public map[string]bool) {
	public = make(map[string]bool)
	for _, rt := range routes {
		patterns = append(patterns, rt.pattern)
		public[rt.pattern] = rt.public
	}
	return patterns, public
}

// OpenAPI is the embedded document.
func OpenAPI() []byte { return openAPI }
