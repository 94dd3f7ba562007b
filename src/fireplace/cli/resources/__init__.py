"""The resource commands; importing a module registers its commands (fireplace.cli.grammar)."""
from fireplace.cli.resources import (accounts, api_keys, datasets, deployed_models, deployments,  # noqa: F401
                                     models, quotas, sft_jobs, users)
