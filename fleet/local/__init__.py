"""The local stack (``fleet up``): embedded broker and Redis, the services as supervised processes, worker state."""
