package restapi

import (
	"errors"
	"net/http"

	"github.com/eastguard/eastguard/controller/agentapi"
)

// handleListTokens lists the join tokens: ids, nodes, times and states,
// never secrets or their hashes.
func (s *API) handleListTokens(w http.ResponseWriter, r *http.Request) {
	toks, err := s.agents.JoinTokens(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toks)
}

// handleDeleteToken deletes one join token and answers what it was.
func (s *API) handleDeleteToken(w http.ResponseWriter, r *http.Request) {
	tok, err := s.agents.DeleteJoinToken(r.Context(), r.PathValue("id"))
	if errors.Is(err, agentapi.ErrUnknownToken) {
		writeError(w, http.StatusNotFound, err.Error()+", nothing changed", nil)
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, tok)
}
