"""``ExportCatalog``: runs a catalog export (``ctdd.catalog.export``) and streams its progress.

Errors: INVALID_ARGUMENT (field violation ``store_key``) for an unknown store; FAILED_PRECONDITION when the
store's catalog is not enabled or no exporter runs in this process; ABORTED when an export of the store is
already running (in this or another process): the request is refused, try again when it has finished.
"""

from __future__ import annotations

from datetime import timezone

from google.rpc import code_pb2

from ctdd.api.convert import Violation
from ctdd.api.errors import abort, bad_request
from ctdd.catalog.export import CatalogExporter, ExportBusy, ExportNotPossible
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
    if exporter is None:
        await abort(context, code_pb2.FAILED_PRECONDITION, "catalog export is not available in this process")
        return
    since = request.modified_since.ToDatetime(tzinfo=timezone.utc) if request.HasField("modified_since") else None
    try:
        async for progress in exporter.export(request.store_key, modified_since=since,
                                              include_categories=True if request.include_categories else None,
                                              collection=request.collection_name or None):
            yield _response(progress)
    except ExportNotPossible as exc:
        await abort(context, code_pb2.FAILED_PRECONDITION, str(exc))
    except ExportBusy as exc:
        await abort(context, code_pb2.ABORTED, str(exc))
