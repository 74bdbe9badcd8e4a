"""The FastAPI integration: ``install(app)``, the middleware, the operator routers
and the dashboard page.

    from dispatcher.fastapi import install, jobs_router, dashboard_router, metrics_router

    app = FastAPI()
    install(app)
    app.include_router(jobs_router)       # GET/POST /tasks..., GET /routes
    app.include_router(dashboard_router)  # GET /dashboard
    app.include_router(metrics_router)    # GET /metrics
"""

from .auth import require_api_token
from .dashboard import router as dashboard_router
from .health import health
from .install import install
from .jobs import Accepted, accepted, guarded
from .jobs import router as jobs_router
from .metrics import router as metrics_router
from .middleware import DispatcherMiddleware

__all__ = [
    "Accepted",
    "DispatcherMiddleware",
    "accepted",
    "dashboard_router",
    "guarded",
    "health",
    "install",
    "jobs_router",
    "metrics_router",
    "require_api_token",
]
