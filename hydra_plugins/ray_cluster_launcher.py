"""`hydra/launcher=ray_cluster`'s launcher. Hydra loads launchers only from the `hydra_plugins` namespace
package, so this thin class lives here; src/infra/cluster.py does the work (docs/scaling.md)."""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher
from omegaconf import DictConfig


class RayClusterLauncher(RayLauncher):
    """hydra-ray-launcher's RayLauncher, waiting for every job and giving up on a job no node can take."""

    def __init__(self, ray: DictConfig, preflight_timeout_s: float, unschedulable_timeout_s: float) -> None:
        super().__init__(ray=ray)
        self.preflight_timeout_s = preflight_timeout_s
        self.unschedulable_timeout_s = unschedulable_timeout_s

    @staticmethod
    def preflight(config: DictConfig) -> None:
        """Called by the sweep's MLflow callback before its parent run exists (src/tracking/sweep.py)."""
        from src.infra.cluster import preflight

        preflight(config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from src.infra.cluster import launch

        return launch(self, job_overrides, initial_job_idx)
