"""Recognising Helm charts among OCI artifacts, and their metadata from the config blob.

`helm push` stores Chart.yaml as JSON in the manifest's config blob (a few hundred bytes),
so the metadata is read without downloading the chart archive."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

HELM_CONFIG: Final = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART_LAYER: Final = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
HELM_PROVENANCE_LAYER: Final = "application/vnd.cncf.helm.chart.provenance.v1.prov"
INDEX_MEDIA_TYPES: Final = frozenset(
    {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
)
CREATED_ANNOTATION: Final = "org.opencontainers.image.created"
MAX_CONFIG_BYTES: Final = 256 * 1024  # Chart.yaml as JSON; real ones are a few KiB

_TEXT_LIMITS: Final = {
    "apiVersion": 16,
    "name": 256,
    "version": 256,
    "appVersion": 256,
    "description": 1024,
    "type": 32,
    "icon": 2048,
    "home": 2048,
    "kubeVersion": 256,
}
_DEPENDENCY_FIELDS: Final = ("name", "version", "repository", "condition", "alias")
MAX_DEPENDENCIES: Final = 50
MAX_KEYWORDS: Final = 20


class NotAChart(ValueError):
    """The artifact is not a Helm chart (an image, a signature, an index, ...)."""


class BadChart(ValueError):
    """It says it is a Helm chart but its metadata cannot be read."""


@dataclass(frozen=True)
class ChartManifest:
    config_digest: str
    created: str | None
    chart_layer_digest: str | None


def classify(manifest: dict[str, Any]) -> ChartManifest:
    """The parts of a Helm chart manifest we need; NotAChart for anything else."""
    media_type = manifest.get("mediaType")
    if media_type in INDEX_MEDIA_TYPES or "manifests" in manifest:
        raise NotAChart("an image index")
    config = manifest.get("config")
    if not isinstance(config, dict) or config.get("mediaType") != HELM_CONFIG:
        kind = config.get("mediaType") if isinstance(config, dict) else None
        raise NotAChart(f"config media type {kind!r}")
    digest = config.get("digest")
    if not isinstance(digest, str) or ":" not in digest:
        raise BadChart("the chart manifest's config has no digest")
    layers = manifest.get("layers")
    chart_layer = None
    for layer in layers if isinstance(layers, list) else ():
        if isinstance(layer, dict) and layer.get("mediaType") == HELM_CHART_LAYER:
            found = layer.get("digest")
            chart_layer = found if isinstance(found, str) else None
            break
    annotations = manifest.get("annotations")
    created = annotations.get(CREATED_ANNOTATION) if isinstance(annotations, dict) else None
    return ChartManifest(digest, created if isinstance(created, str) else None, chart_layer)


def chart_metadata(blob: bytes) -> dict[str, Any]:
    """Chart.yaml fields from the config blob, trimmed to what an index entry carries:
    name, version, appVersion, description, type, icon, dependencies and a few more."""
    try:
        raw = json.loads(blob)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: not Chart.yaml
        raise BadChart("the chart's config blob is not JSON") from None
    if not isinstance(raw, dict):
        raise BadChart("the chart's config blob is not a JSON object")
    name, version = raw.get("name"), raw.get("version")
    if not isinstance(name, str) or not name or not isinstance(version, str) or not version:
        raise BadChart("the chart's metadata has no name or version")
    out: dict[str, Any] = {}
    for key, limit in _TEXT_LIMITS.items():
        value = raw.get(key)
        if isinstance(value, str) and value:
            out[key] = value if len(value) <= limit else value[: limit - 3] + "..."
    if raw.get("deprecated") is True:
        out["deprecated"] = True
    keywords = raw.get("keywords")
    if isinstance(keywords, list):
        words = [k[:64] for k in keywords if isinstance(k, str) and k][:MAX_KEYWORDS]
        if words:
            out["keywords"] = words
    dependencies = raw.get("dependencies")
    if isinstance(dependencies, list):
        deps = []
        for dep in dependencies[:MAX_DEPENDENCIES]:
            if not isinstance(dep, dict) or not isinstance(dep.get("name"), str):
                continue
            deps.append(
                {
                    k: dep[k][:512]
                    for k in _DEPENDENCY_FIELDS
                    if isinstance(dep.get(k), str) and dep[k]
                }
            )
        if deps:
            out["dependencies"] = deps
    return out
