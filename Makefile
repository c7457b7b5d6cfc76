# Run `make` for the list of targets.
.DEFAULT_GOAL := help
PORT ?= 8080

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

run: ## run the service (JSONL files under ./data unless DATABASE_URL is set)
	go run .

test: ## run the whole test suite (needs PostgreSQL, default 127.0.0.1:5432); ends with what skipped and why
	bash scripts/test.sh -race -count=1

vet: ## gofmt check and go vet
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	go vet ./...

build: ## build a static binary at ./bin/atl
	CGO_ENABLED=0 go build -buildvcs=true -trimpath -o bin/atl .

screenshots: ## run the browser tests and save their screenshots to docs/screenshots (shown in docs/console.md)
	ATL_SCREENSHOT_DIR=$(CURDIR)/docs/screenshots go test -count=1 -run TestConsoleInBrowser ./tests

walkthrough: ## regenerate docs/walkthrough.md: every curl of the walkthrough run against PostgreSQL (DATABASE_URL names the server)
	DATABASE_URL="$${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}" bash scripts/walkthrough.sh > docs/walkthrough.md.tmp
	mv docs/walkthrough.md.tmp docs/walkthrough.md

docs: walkthrough ## regenerate the generated pages: docs/walkthrough.md and docs/sql.md (the SQL API from its COMMENT ON texts)
	DATABASE_URL="$${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}" bash scripts/sql-docs.sh > docs/sql.md.tmp
	mv docs/sql.md.tmp docs/sql.md

migrate: ## apply migrations to DATABASE_URL with tern, as a DBA would
	go run github.com/jackc/tern/v2@v2.3.4 migrate -c tern.conf -m sql

bench: ## run every benchmark: writes, reads at 10M rows, idle connections, go test -bench (bench/README.md)
	bash bench/all.sh

ci: ## what CI runs
	bash .ci/run

.PHONY: help run test vet build screenshots walkthrough docs migrate bench ci
