"""The Assistants API's routes, one module (an APIRouter) per resource."""
