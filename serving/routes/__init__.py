"""The v1 API's routers, one per resource (FastAPI's template, `api/routes/`): scoring, events, customers,
model and health. `serving.app` includes them; each sets its key check and documented errors once."""
