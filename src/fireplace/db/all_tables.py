"""Imports every resource's tables so Base.metadata is complete (migrations, tests)."""
from fireplace.control import signed_urls as _signed_urls  # noqa: F401
from fireplace.control.accounts import tables as _accounts  # noqa: F401
from fireplace.control.api_keys import tables as _api_keys  # noqa: F401
from fireplace.control.datasets import tables as _datasets  # noqa: F401
from fireplace.control.deployed_models import tables as _deployed_models  # noqa: F401
from fireplace.control.deployments import tables as _deployments  # noqa: F401
from fireplace.control.fine_tuning import tables as _fine_tuning  # noqa: F401
from fireplace.control.models import tables as _models  # noqa: F401
from fireplace.control.quotas import tables as _quotas  # noqa: F401
from fireplace.control.usage import tables as _usage  # noqa: F401
from fireplace.control.users import tables as _users  # noqa: F401
from fireplace.orchestration import tables as _orchestration  # noqa: F401
from fireplace.db.base import Base

metadata = Base.metadata
