"""The console's pages, one module a section: each a router of GET pages (and the
fragments htmx refreshes), every one behind `session.signed_in`."""
