"""Drift, watched in the app's monitor: the rows ingress replicas tap from each model version with `drift:`, tested
window by window against the version's reference (monitoring/drift.py), as gauges and as alerts.

A version that starts drifting is one alert, and one more when it stops: a CloudEvent to the webhooks
(`model.drift.detected`, `model.drift.resolved`; monitoring/notifier.py) and a line in the audit log of the node the
monitor runs on. The reference is fetched once, from the spec's `drift.reference` (a path or any storage URI); one
that cannot be read is logged and that version is not watched, the app serves on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from monitoring.drift import DriftSettings, DriftWindows, WindowResult, feature_columns, load_reference

from .spec import ModelSpec

__all__ = ["DRIFT_SOURCE", "DriftWatch"]

logger = logging.getLogger("ray.serve")

DRIFT_SOURCE = "/modelfleet/apps/{app}/monitor"  # the CloudEvents `source` of an app's drift alerts


class DriftWatch:
    """Per model version with `drift:`: its windows, its gauges in `registry`, its alerts."""

    def __init__(self, app: str, registry: CollectorRegistry) -> None:
        self.app = app
        self.settings: dict[tuple[str, str], DriftSettings] = {}
        self.windows: dict[tuple[str, str], DriftWindows | None] = {}  # None: its reference could not be read
        self.drifting: dict[tuple[str, str], bool] = {}
        self.last: dict[tuple[str, str], WindowResult] = {}
        self.judged: dict[tuple[str, str], int] = {}
        self._notifier: Any = None
        self.score = Gauge(
            "modelfleet_drift_score",
            "Each input feature's drift statistic over the last window against the version's reference: the KS "
            "statistic (numeric) or chi-square (categorical), and its PSI (test=psi).",
            ["model", "version", "feature", "test"],
            registry=registry,
        )
        self.detected = Gauge(
            "modelfleet_drift_detected",
            "1 while the version's last window drifted (a feature's test rejected and its PSI passed the threshold).",
            ["model", "version"],
            registry=registry,
        )

    def describe(self, models: list[ModelSpec]) -> None:
        """The versions to watch, as the app's newest spec says (a changed reference is read again)."""
        settings = {(m.name, m.version): m.drift for m in models if m.drift is not None}
        for key, drift in settings.items():
            if self.settings.get(key) != drift:
                self.windows.pop(key, None)
        self.settings = settings

    async def observe(self, tapped: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
        for key, batches in tapped.items():
            windows = await self._windows(key)
            if windows is None:
                continue
            results = await asyncio.to_thread(_add_all, windows, batches)
            for result in results:
                await self._judged(key, result)

    async def _windows(self, key: tuple[str, str]) -> DriftWindows | None:
        if key not in self.windows:
            settings = self.settings.get(key)
            self.windows[key] = None
            if settings is None or not settings.reference:
                return None
            try:
                profile = await asyncio.to_thread(_read_reference, settings)
            except Exception as exc:
                logger.error("drift: model %s v%s is not watched: its reference did not load: %s", *key, exc)
                return None
            self.windows[key] = DriftWindows(profile, settings)
        return self.windows[key]

    def state(self, model: str, version: str) -> dict[str, Any] | None:
        """The version's drift as its last window left it (None: not watched); for the status page."""
        key = (model, version)
        if key not in self.settings:
            return None
        last, windows = self.last.get(key), self.windows.get(key)
        return {
            "reference_loaded": key not in self.windows or windows is not None,  # False: it could not be read
            "windows": self.judged.get(key, 0),
            "drifted": bool(last and last.drifted),
            "features": last.drifted_features if last else [],
            "pending_rows": windows.pending_rows if windows is not None else 0,
        }

    async def _judged(self, key: tuple[str, str], result: WindowResult) -> None:
        model, version = key
        self.last[key] = result
        self.judged[key] = self.judged.get(key, 0) + 1
        for feature in result.features:
            self.score.labels(model, version, feature.feature, feature.test).set(feature.statistic)
            self.score.labels(model, version, feature.feature, "psi").set(feature.psi)
        self.detected.labels(model, version).set(1 if result.drifted else 0)
        if result.drifted == self.drifting.get(key, False):
            return
        self.drifting[key] = result.drifted
        await asyncio.to_thread(self._alert, model, version, result)

    def _alert(self, model: str, version: str, result: WindowResult) -> None:
        """A change of state: to the webhooks and the audit log (each failure logged, never raised)."""
        kind = "detected" if result.drifted else "resolved"
        data = {
            "app": self.app,
            "model": model,
            "version": version,
            "window_rows": result.rows,
            "drifted_features": result.drifted_features,
            "features": [
                {
                    "feature": f.feature,
                    "test": f.test,
                    "statistic": round(f.statistic, 6),
                    "p_value": f.p_value,
                    "psi": round(f.psi, 6),
                    "drifted": f.drifted,
                }
                for f in result.features
            ],
        }
        logger.warning("drift %s: model %s v%s (%s)", kind, model, version, ", ".join(result.drifted_features))
        try:
            if self._notifier is None:
                from monitoring.notifier import notifier_from_env

                self._notifier = notifier_from_env()
            self._notifier.send(DRIFT_SOURCE.format(app=self.app), f"model.drift.{kind}", data, f"{model}/{version}")
        except Exception as exc:
            logger.error("drift %s of model %s v%s: no webhook was told: %s", kind, model, version, exc)
        try:
            from monitoring.audit import audit_log_from_env

            details = {"model": model, "version": version, "drifted_features": result.drifted_features}
            audit_log_from_env().append(
                f"drift.{kind}", f"app:{self.app}/{model}@{version}", actor="monitor", details=details
            )
        except Exception as exc:
            logger.error("drift %s of model %s v%s: not in the audit log: %s", kind, model, version, exc)


def _read_reference(settings: DriftSettings):
    from providers.storage import fetch

    assert settings.reference is not None
    return load_reference(fetch(settings.reference), settings)


def _add_all(windows: DriftWindows, batches: list[dict[str, Any]]) -> list[WindowResult]:
    results: list[WindowResult] = []
    for inputs in batches:
        results += windows.add(feature_columns(inputs))
    return results
