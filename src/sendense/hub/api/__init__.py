"""The hub's REST API (port 8082): thin routers over `sendense.hub.service.Hub`."""
