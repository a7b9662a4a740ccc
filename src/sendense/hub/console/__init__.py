"""The web console under `/`: server-rendered pages (Jinja2) over the same hub
the API serves, with htmx for the parts that refresh and the task API's events
for live progress. Pages read through `hub.api.queries` and the hub's services;
every action a page offers is a call of the JSON API from the browser (the
session cookie plus a CSRF token), so roles, validation and the audit log are the
API's own. May import anything in the hub, `hub.api` included (it is a
presentation layer beside the API); only the hub's app (`hub.api.app`) mounts it."""
