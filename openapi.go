package main

import (
	_ "embed"
	"net/http"

	"github.com/julienschmidt/httprouter"
)

// openAPIDocument is the API's contract, kept by hand in api/openapi.json and
// checked against the service by TestOpenAPIConformance.
//
//go:embed api/openapi.json
var openAPIDocument []byte

// openAPI serves the document as it is in the repository.
func (a *App) openAPI(w http.ResponseWriter, _ *http.Request, _ httprouter.Params) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(openAPIDocument)
	return nil
}
