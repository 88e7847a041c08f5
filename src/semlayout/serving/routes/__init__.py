"""The HTTP endpoints, one APIRouter per area (`create_app` includes them in this order):

- `health_routes`: GET /healthz, /readyz, /metrics;
- `translate_routes`: POST /v1/translate/{direction}[/json|/batch];
- `align_routes`: POST /v1/align;
- `feedback_routes`: POST /v1/ground-truth/{prediction_id}, /v1/feedback (API token);
- `monitoring_routes`: GET /v1/monitoring/summary;
- `layer_routes`: GET /v1/layers, PUT/DELETE /v1/layers/{layer}/polarity (admin token);
- `admin_routes`: POST /v1/admin/reload (admin token).

Endpoints get what they need injected (`serving.deps`); the translate path's steps are in
`serving.translation`.
"""
