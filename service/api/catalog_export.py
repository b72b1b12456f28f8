"""``ExportCatalog``: runs a catalog export (``ctdd.catalog.export``) and streams its progress.

Errors: INVALID_ARGUMENT with field violations for an unknown store (``store_key``), a collection name Dotdigital
would refuse (``collection_name``) or a time outside the Timestamp range (``modified_since``); FAILED_PRECONDITION when the
store's catalog is not enabled or no exporter runs in this process; ABORTED when an export of the store is
already running (in this or another process): the request is refused, try again when it has finished.
"""

from __future__ import annotations

from google.rpc import code_pb2

from ctdd.api.convert import Violation, timestamp
from ctdd.api.errors import abort, bad_request
from ctdd.catalog.export import CatalogExporter, ExportBusy, ExportNotPossible
from ctdd.domain.catalog import COLLECTION_NAME_RULE, is_collection_name
from ctdd.domain.echo import echo
from ctdd.sync.v1 import sync_service_pb2 as pb


def _response(progress) -> pb.ExportCatalogResponse:
    return pb.ExportCatalogResponse(products_read=progress.products_read, records_enqueued=progress.records_enqueued,
                                    records_rejected=progress.records_rejected, done=progress.done)


async def export_catalog(exporter: CatalogExporter | None, settings, request: pb.ExportCatalogRequest, context):
    if not request.store_key or request.store_key not in settings.stores:
        problem = f"unknown store {echo(request.store_key)}" if request.store_key else "required"
        await abort(context, code_pb2.INVALID_ARGUMENT, "unknown store" if request.store_key else "store_key required",
                    [bad_request([Violation("store_key", problem)])])
        return
    violations: list[Violation] = []
    if request.collection_name and not is_collection_name(request.collection_name):
        violations.append(Violation("collection_name", f"not a Dotdigital collection name ({COLLECTION_NAME_RULE})"))
    since = (timestamp(violations, "modified_since", request.modified_since)
             if request.HasField("modified_since") else None)
    if violations:
        await abort(context, code_pb2.INVALID_ARGUMENT, "invalid ExportCatalogRequest", [bad_request(violations)])
        return
    if exporter is None:
        await abort(context, code_pb2.FAILED_PRECONDITION, "catalog export is not available in this process")
        return
    try:
        async for progress in exporter.export(request.store_key, modified_since=since,
                                              include_categories=True if request.include_categories else None,
                                              collection=request.collection_name or None):
            yield _response(progress)
    except ExportNotPossible as exc:
        await abort(context, code_pb2.FAILED_PRECONDITION, str(exc))
    except ExportBusy as exc:
        await abort(context, code_pb2.ABORTED, str(exc))
