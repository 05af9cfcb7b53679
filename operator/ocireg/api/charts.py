"""Helm chart repository sync: the `spec.charts` model and what `status.charts` reports.

OCI registries keep no index of the charts they hold; ocireg reads the repositories listed
here (or found through the catalog API) and publishes a Helm `index.yaml` and a summary."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field

from .base import ApiModel
from .durations import DURATION_PATTERN

REPOSITORY_PATTERN = r"^[a-z0-9]+([._/-][a-z0-9]+)*$"
MAX_REPOSITORIES = 500
MAX_ITEMS_IN_STATUS = 50
MAX_ERRORS_IN_STATUS = 20


def _rules(*pairs: tuple[str, str]) -> ConfigDict:
    return ConfigDict(
        **ApiModel.model_config,
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": r, "message": m} for r, m in pairs]
        },
    )


class ChartVersions(ApiModel):
    """Which versions of each chart to index."""

    constraint: Annotated[
        str | None,
        Field(
            description="A Helm version constraint, e.g. `>=1.0.0`, `^2.1`, `~1.4 || >=3.0.0-0`. "
            "Without one every version is indexed; a constraint without a pre-release part "
            "leaves pre-releases out, as Helm does.",
            max_length=256,
        ),
    ] = None
    keep: Annotated[
        int,
        Field(
            description="Index at most this many versions per chart, newest first.", ge=1, le=200
        ),
    ] = 20


class Charts(ApiModel):
    """Publish the Helm charts this registry holds: a Helm `index.yaml` in a ConfigMap
    (`<name>-charts`) and a summary in status.charts."""

    model_config = _rules(
        (
            "(has(self.repositories) && size(self.repositories) > 0) || "
            "(has(self.discover) && self.discover)",
            "list charts.repositories, or set charts.discover to find them through the "
            "registry's catalog",
        ),
        ("duration(self.interval) >= duration('1m')", "charts.interval must be at least 1m"),
    )

    repositories: Annotated[
        list[Annotated[str, Field(max_length=255, pattern=REPOSITORY_PATTERN)]],
        Field(
            description="Chart repositories, relative to server and repositoryPrefix, e.g. "
            "charts/podinfo (what `helm push chart.tgz oci://server/charts` creates).",
            max_length=MAX_REPOSITORIES,
            json_schema_extra={"x-kubernetes-list-type": "set"},
        ),
    ] = []
    discover: Annotated[
        bool,
        Field(
            description="Also list repositories through the registry's catalog API "
            "(/v2/_catalog), under repositoryPrefix. Many registries refuse it; the ChartsSynced "
            "condition then says so, and repositories must be listed instead.",
        ),
    ] = False
    versions: Annotated[ChartVersions | None, Field(description=ChartVersions.__doc__)] = None
    interval: Annotated[
        str,
        Field(
            description="How often the registry is read again (Go duration). An unchanged "
            "repository costs about one request.",
            pattern=DURATION_PATTERN,
            max_length=32,
        ),
    ] = "15m"

    @property
    def effective_versions(self) -> ChartVersions:
        return self.versions or ChartVersions()


# --------------------------------------------------------------------------- status


class ChartItem(ApiModel):
    """A chart in the index."""

    repository: Annotated[str, Field(description="Repository, relative to repositoryPrefix.")]
    name: Annotated[str, Field(description="Chart name.")]
    latest: Annotated[str, Field(description="Newest version (newest stable one if there is one).")]
    versions: Annotated[int, Field(description="Versions indexed.")]


class ChartError(ApiModel):
    """A repository whose charts could not be read."""

    repository: Annotated[str, Field(description="Repository, relative to repositoryPrefix.")]
    reason: Annotated[str, Field(description="Why it could not be read, e.g. Unreachable.")]
    message: Annotated[str, Field(description="What happened and what to do about it.")] = ""


class ChartsStatus(ApiModel):
    repositories: Annotated[int, Field(description="Repositories holding indexed charts.")] = 0
    versions: Annotated[int, Field(description="Chart versions in the index.")] = 0
    skipped: Annotated[
        int,
        Field(description="Version-tagged artifacts that are not Helm charts (e.g. images)."),
    ] = 0
    last_synced_at: Annotated[str | None, Field(description="When the registry was last read.")] = (
        None
    )
    config_map: Annotated[
        str | None, Field(description="namespace/name of the ConfigMap holding index.yaml.")
    ] = None
    requests: Annotated[int | None, Field(description="Registry requests the last sync made.")] = (
        None
    )
    items: Annotated[
        list[ChartItem],
        Field(description=f"Charts, by repository (at most {MAX_ITEMS_IN_STATUS} listed)."),
    ] = []
    errors: Annotated[
        list[ChartError],
        Field(
            description=f"Repositories that could not be read (at most {MAX_ERRORS_IN_STATUS} "
            "listed); their last good versions stay in the index."
        ),
    ] = []
    error_count: Annotated[int, Field(description="How many repositories failed in all.")] = 0
