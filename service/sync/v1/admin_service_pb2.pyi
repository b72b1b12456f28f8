import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TriggerStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRIGGER_STATUS_UNSPECIFIED: _ClassVar[TriggerStatus]
    TRIGGER_STATUS_PENDING: _ClassVar[TriggerStatus]
    TRIGGER_STATUS_CLAIMED: _ClassVar[TriggerStatus]
    TRIGGER_STATUS_ENROLLING: _ClassVar[TriggerStatus]
    TRIGGER_STATUS_SENT: _ClassVar[TriggerStatus]
    TRIGGER_STATUS_SKIPPED: _ClassVar[TriggerStatus]
    TRIGGER_STATUS_CANCELLED: _ClassVar[TriggerStatus]
TRIGGER_STATUS_UNSPECIFIED: TriggerStatus
TRIGGER_STATUS_PENDING: TriggerStatus
TRIGGER_STATUS_CLAIMED: TriggerStatus
TRIGGER_STATUS_ENROLLING: TriggerStatus
TRIGGER_STATUS_SENT: TriggerStatus
TRIGGER_STATUS_SKIPPED: TriggerStatus
TRIGGER_STATUS_CANCELLED: TriggerStatus

class ListTriggersRequest(_message.Message):
    __slots__ = ("email", "customer_id", "mobile_number", "contact_id", "store_key", "statuses", "page_size")
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    MOBILE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    CONTACT_ID_FIELD_NUMBER: _ClassVar[int]
    STORE_KEY_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    email: str
    customer_id: str
    mobile_number: str
    contact_id: str
    store_key: str
    statuses: _containers.RepeatedScalarFieldContainer[TriggerStatus]
    page_size: int
    def __init__(self, email: _Optional[str] = ..., customer_id: _Optional[str] = ..., mobile_number: _Optional[str] = ..., contact_id: _Optional[str] = ..., store_key: _Optional[str] = ..., statuses: _Optional[_Iterable[_Union[TriggerStatus, str]]] = ..., page_size: _Optional[int] = ...) -> None: ...

class ListTriggersResponse(_message.Message):
    __slots__ = ("contact_id", "account", "triggers", "has_more", "summary")
    CONTACT_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    TRIGGERS_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    contact_id: str
    account: str
    triggers: _containers.RepeatedCompositeFieldContainer[Trigger]
    has_more: bool
    summary: TriggerSummary
    def __init__(self, contact_id: _Optional[str] = ..., account: _Optional[str] = ..., triggers: _Optional[_Iterable[_Union[Trigger, _Mapping]]] = ..., has_more: _Optional[bool] = ..., summary: _Optional[_Union[TriggerSummary, _Mapping]] = ...) -> None: ...

class Trigger(_message.Message):
    __slots__ = ("id", "contact_id", "store_key", "account", "program_kind", "program_id", "subject_type", "subject_id", "subject_version", "step", "status", "status_name", "due_at", "decided_at", "reason", "enrolment_id", "attempts", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    CONTACT_ID_FIELD_NUMBER: _ClassVar[int]
    STORE_KEY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_KIND_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_VERSION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_NAME_FIELD_NUMBER: _ClassVar[int]
    DUE_AT_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ENROLMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: int
    contact_id: str
    store_key: str
    account: str
    program_kind: str
    program_id: int
    subject_type: str
    subject_id: str
    subject_version: int
    step: int
    status: TriggerStatus
    status_name: str
    due_at: _timestamp_pb2.Timestamp
    decided_at: _timestamp_pb2.Timestamp
    reason: str
    enrolment_id: str
    attempts: int
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[int] = ..., contact_id: _Optional[str] = ..., store_key: _Optional[str] = ..., account: _Optional[str] = ..., program_kind: _Optional[str] = ..., program_id: _Optional[int] = ..., subject_type: _Optional[str] = ..., subject_id: _Optional[str] = ..., subject_version: _Optional[int] = ..., step: _Optional[int] = ..., status: _Optional[_Union[TriggerStatus, str]] = ..., status_name: _Optional[str] = ..., due_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., decided_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., enrolment_id: _Optional[str] = ..., attempts: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TriggerSummary(_message.Message):
    __slots__ = ("statuses", "skipped_reasons", "pending_due", "enrolment_budgets")
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_REASONS_FIELD_NUMBER: _ClassVar[int]
    PENDING_DUE_FIELD_NUMBER: _ClassVar[int]
    ENROLMENT_BUDGETS_FIELD_NUMBER: _ClassVar[int]
    statuses: _containers.RepeatedCompositeFieldContainer[TriggerStatusCount]
    skipped_reasons: _containers.RepeatedCompositeFieldContainer[TriggerReasonCount]
    pending_due: int
    enrolment_budgets: _containers.RepeatedCompositeFieldContainer[EnrolmentBudget]
    def __init__(self, statuses: _Optional[_Iterable[_Union[TriggerStatusCount, _Mapping]]] = ..., skipped_reasons: _Optional[_Iterable[_Union[TriggerReasonCount, _Mapping]]] = ..., pending_due: _Optional[int] = ..., enrolment_budgets: _Optional[_Iterable[_Union[EnrolmentBudget, _Mapping]]] = ...) -> None: ...

class TriggerStatusCount(_message.Message):
    __slots__ = ("status", "status_name", "count")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_NAME_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    status: TriggerStatus
    status_name: str
    count: int
    def __init__(self, status: _Optional[_Union[TriggerStatus, str]] = ..., status_name: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class TriggerReasonCount(_message.Message):
    __slots__ = ("reason", "count")
    REASON_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    reason: str
    count: int
    def __init__(self, reason: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class EnrolmentBudget(_message.Message):
    __slots__ = ("account", "calls_last_hour", "calls_per_hour")
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    CALLS_LAST_HOUR_FIELD_NUMBER: _ClassVar[int]
    CALLS_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    account: str
    calls_last_hour: int
    calls_per_hour: int
    def __init__(self, account: _Optional[str] = ..., calls_last_hour: _Optional[int] = ..., calls_per_hour: _Optional[int] = ...) -> None: ...
