"""The hub's REST API (port 8082): thin routers over `sendense.hub.service.Hub`
(one module a path under `routes/`), the read side (`queries`) and the API's
schemas. May import anything in the hub; nothing in the hub imports it."""
