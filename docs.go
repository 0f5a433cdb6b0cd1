package main

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"strings"
)

// openAPIDocument is the hand-written OpenAPI 3.1 description of every route.
// Its info.version is a placeholder (openAPIVersionPlaceholder):
// handleOpenAPI puts APP_VERSION there.
//
//go:embed openapi.json
var openAPIDocument []byte

// defaultDocsAssetBaseURL is a public CDN that serves npm packages by version
// under BASE/PACKAGE@VERSION/FILE. DOCS_ASSET_BASE_URL replaces it with a
// copy of the same layout, for sites that cannot reach the internet.
const defaultDocsAssetBaseURL = "https://cdn.jsdelivr.net/npm"

// docsAsset is one file the documentation pages load from the asset base URL.
type docsAsset struct {
	pkg, version, file string
	// integrity is the Subresource Integrity hash of the exact file in the
	// npm package: a copy that differs in one byte is refused by the browser.
	integrity string
}

// url is where the browser fetches the asset from.
func (a docsAsset) url(base string) string {
	return base + "/" + a.pkg + "@" + a.version + "/" + a.file
}

// The pinned UI packages, one place for their versions and hashes. They must
// match tools/package.json, whose files TestDocsAssetsMatchPinnedPackages
// hashes; to upgrade, change both and run `make test`, which names the new
// hashes.
var (
	swaggerUIScript = docsAsset{"swagger-ui-dist", "5.35.0", "swagger-ui-bundle.js",
		"sha384-gjRm0bEPMeTmMh5jT2cHccIwCUZSTd8YC+j0d0sXw0MdGEfScduGpSyF3ZSSLkX9"}
	swaggerUIStyle = docsAsset{"swagger-ui-dist", "5.35.0", "swagger-ui.css",
		"sha384-WlYgdmXYOOBWL5apwjDEZwN+U3HmXSSu5R6V5aGxEcf7z+KuRNwBhoxKVN1i3D5I"}
	redocScript = docsAsset{"redoc", "2.5.4", "bundles/redoc.standalone.js",
		"sha384-w447zOpYfw/1Tv/5AK9NfHTlQIqE3RVR6KY62jCyy9zNDgO64cMwGGP1Fj0zJVf5"}
)

// The two documentation pages. Swagger UI draws its icons from data: URLs in
// its stylesheet; ReDoc styles itself with <style> elements it creates at run
// time (styled-components) and builds its search index in a worker started
// from a blob: URL.
var (
	swaggerUIPage = docsPage{Title: "Swagger UI", MountID: "swagger-ui", Init: "/docs/init.js",
		Styles: []docsAsset{swaggerUIStyle}, Scripts: []docsAsset{swaggerUIScript}}
	redocPage = docsPage{Title: "ReDoc", MountID: "redoc", Init: "/redoc/init.js",
		Scripts: []docsAsset{redocScript}, InlineStyles: true, BlobWorker: true}
)

// handleOpenAPI serves the OpenAPI document with info.version set to
// APP_VERSION, rewritten once here rather than on every request.
func (s *server) handleOpenAPI() http.Handler {
	doc, err := withInfoVersion(openAPIDocument, s.cfg.AppVersion)
	if err != nil {
		// Only a broken embedded document gets here, which the tests catch;
		// the route answers 500 rather than taking the server down.
		err = fmt.Errorf("openapi.json: %w", err)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.writeError(w, r, err) })
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, doc)
	})
}

// openAPIVersionPlaceholder is info.version as openapi.json spells it.
const openAPIVersionPlaceholder = `"version": "0.0.0"`

// withInfoVersion returns doc with its info.version placeholder replaced by
// version. Only a string edit keeps every member where it was written, so
// that the document reads as it does in the source and the UIs list the
// routes in that order.
func withInfoVersion(doc []byte, version string) (json.RawMessage, error) {
	if n := bytes.Count(doc, []byte(openAPIVersionPlaceholder)); n != 1 {
		return nil, fmt.Errorf("want info.version written once as %s, found it %d times", openAPIVersionPlaceholder, n)
	}
	v, err := json.Marshal(version)
	if err != nil {
		return nil, err
	}
	return bytes.Replace(doc, []byte(openAPIVersionPlaceholder), append([]byte(`"version": `), v...), 1), nil
}

// docsPage is what sets one documentation page apart from the other.
type docsPage struct {
	Title        string      // after "APP_NAME API"
	MountID      string      // the element the UI draws into
	Init         string      // our script that starts the UI, served from the binary
	Styles       []docsAsset // loaded with SRI from the asset base URL
	Scripts      []docsAsset // likewise, before Init
	InlineStyles bool        // the UI needs style-src 'unsafe-inline'
	BlobWorker   bool        // the UI needs worker-src blob:
}

// docsPageTemplate is the HTML of both pages. It has no inline script or
// style, so that the Content-Security-Policy can forbid them.
var docsPageTemplate = template.Must(template.New("docs").Parse(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Title}}</title>
<link rel="icon" href="data:,">
{{- range .Styles}}
<link rel="stylesheet" href="{{.URL}}" integrity="{{.Integrity}}" crossorigin="anonymous">
{{- end}}
</head>
<body>
<div id="{{.Page.MountID}}"></div>
{{- range .Scripts}}
<script src="{{.URL}}" integrity="{{.Integrity}}" crossorigin="anonymous"></script>
{{- end}}
<script src="{{.Page.Init}}"></script>
</body>
</html>
`))

// assetLink is an asset as the template writes it.
type assetLink struct{ URL, Integrity string }

// handleDocsPage renders page once and serves it as HTML with a
// Content-Security-Policy that allows the page's own files and nothing else.
func (s *server) handleDocsPage(page docsPage) http.Handler {
	base := s.cfg.DocsAssetBaseURL
	links := func(assets []docsAsset) []assetLink {
		out := make([]assetLink, len(assets))
		for i, a := range assets {
			out[i] = assetLink{URL: a.url(base), Integrity: a.integrity}
		}
		return out
	}
	urls := func(assets []docsAsset) string {
		var out []string
		for _, a := range assets {
			out = append(out, a.url(base))
		}
		return strings.Join(out, " ")
	}
	styleSrc, worker := urls(page.Styles), ""
	if page.InlineStyles {
		styleSrc = "'unsafe-inline'"
	}
	if page.BlobWorker {
		worker = "; worker-src blob:"
	}
	csp := "default-src 'none'; script-src 'self' " + urls(page.Scripts) + "; style-src " + styleSrc +
		"; img-src data:; connect-src 'self'" + worker + "; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

	var html bytes.Buffer
	err := docsPageTemplate.Execute(&html, struct {
		Title           string
		Page            docsPage
		Styles, Scripts []assetLink
	}{s.cfg.AppName + " API (" + page.Title + ")", page, links(page.Styles), links(page.Scripts)})
	if err != nil {
		err = fmt.Errorf("docs page %q: %w", page.Title, err)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.writeError(w, r, err) })
	}
	body := html.Bytes()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", csp)
		writeBody(w, http.StatusOK, "text/html; charset=utf-8", body)
	})
}

// swaggerInitScript starts Swagger UI on our document. validatorUrl: null
// keeps it from sending the document to an online validator.
const swaggerInitScript = `"use strict";
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null
});
`

// redocInitScript starts ReDoc on our document.
const redocInitScript = `"use strict";
Redoc.init("/openapi.json", {}, document.getElementById("redoc"));
`

// handleScript serves one of the init scripts above.
func handleScript(script string) http.Handler {
	body := []byte(script)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeBody(w, http.StatusOK, "text/javascript; charset=utf-8", body)
	})
}
