import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FailureStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_STATUS_UNSPECIFIED: _ClassVar[FailureStatus]
    FAILURE_STATUS_DEAD: _ClassVar[FailureStatus]
    FAILURE_STATUS_PARKED: _ClassVar[FailureStatus]
    FAILURE_STATUS_FAILED: _ClassVar[FailureStatus]
    FAILURE_STATUS_REJECTED: _ClassVar[FailureStatus]
    FAILURE_STATUS_SKIPPED: _ClassVar[FailureStatus]

class FailureSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_SOURCE_UNSPECIFIED: _ClassVar[FailureSource]
    FAILURE_SOURCE_OUTBOX: _ClassVar[FailureSource]
    FAILURE_SOURCE_INBOX: _ClassVar[FailureSource]
    FAILURE_SOURCE_REJECTED: _ClassVar[FailureSource]

class RedriveOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REDRIVE_OUTCOME_UNSPECIFIED: _ClassVar[RedriveOutcome]
    REDRIVE_OUTCOME_RETRIED: _ClassVar[RedriveOutcome]
    REDRIVE_OUTCOME_SKIPPED: _ClassVar[RedriveOutcome]
    REDRIVE_OUTCOME_UNCHANGED: _ClassVar[RedriveOutcome]
    REDRIVE_OUTCOME_REFUSED: _ClassVar[RedriveOutcome]
    REDRIVE_OUTCOME_NOT_FOUND: _ClassVar[RedriveOutcome]
    REDRIVE_OUTCOME_WOULD_RETRY: _ClassVar[RedriveOutcome]
    REDRIVE_OUTCOME_WOULD_SKIP: _ClassVar[RedriveOutcome]

class TriggerStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRIGGER_STATUS_UNSPECIFIED: _ClassVar[TriggerStatus]
    TRIGGER_STATUS_PENDING: _ClassVar[TriggerStatus]
    TRIGGER_STATUS_CLAIMED: _ClassVar[TriggerStatus]
    TRIGGER_STATUS_ENROLLING: _ClassVar[TriggerStatus]
    TRIGGER_STATUS_SENT: _ClassVar[TriggerStatus]
    TRIGGER_STATUS_SKIPPED: _ClassVar[TriggerStatus]
    TRIGGER_STATUS_CANCELLED: _ClassVar[TriggerStatus]
FAILURE_STATUS_UNSPECIFIED: FailureStatus
FAILURE_STATUS_DEAD: FailureStatus
FAILURE_STATUS_PARKED: FailureStatus
FAILURE_STATUS_FAILED: FailureStatus
FAILURE_STATUS_REJECTED: FailureStatus
FAILURE_STATUS_SKIPPED: FailureStatus
FAILURE_SOURCE_UNSPECIFIED: FailureSource
FAILURE_SOURCE_OUTBOX: FailureSource
FAILURE_SOURCE_INBOX: FailureSource
FAILURE_SOURCE_REJECTED: FailureSource
REDRIVE_OUTCOME_UNSPECIFIED: RedriveOutcome
REDRIVE_OUTCOME_RETRIED: RedriveOutcome
REDRIVE_OUTCOME_SKIPPED: RedriveOutcome
REDRIVE_OUTCOME_UNCHANGED: RedriveOutcome
REDRIVE_OUTCOME_REFUSED: RedriveOutcome
REDRIVE_OUTCOME_NOT_FOUND: RedriveOutcome
REDRIVE_OUTCOME_WOULD_RETRY: RedriveOutcome
REDRIVE_OUTCOME_WOULD_SKIP: RedriveOutcome
TRIGGER_STATUS_UNSPECIFIED: TriggerStatus
TRIGGER_STATUS_PENDING: TriggerStatus
TRIGGER_STATUS_CLAIMED: TriggerStatus
TRIGGER_STATUS_ENROLLING: TriggerStatus
TRIGGER_STATUS_SENT: TriggerStatus
TRIGGER_STATUS_SKIPPED: TriggerStatus
TRIGGER_STATUS_CANCELLED: TriggerStatus

class FailureFilter(_message.Message):
    __slots__ = ("store_key", "code", "kind", "contact_id", "email", "since", "until", "statuses")
    STORE_KEY_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CONTACT_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    store_key: str
    code: str
    kind: str
    contact_id: str
    email: str
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    statuses: _containers.RepeatedScalarFieldContainer[FailureStatus]
    def __init__(self, store_key: _Optional[str] = ..., code: _Optional[str] = ..., kind: _Optional[str] = ..., contact_id: _Optional[str] = ..., email: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., statuses: _Optional[_Iterable[_Union[FailureStatus, str]]] = ...) -> None: ...

class ListFailuresRequest(_message.Message):
    __slots__ = ("filter", "page_size")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    filter: FailureFilter
    page_size: int
    def __init__(self, filter: _Optional[_Union[FailureFilter, _Mapping]] = ..., page_size: _Optional[int] = ...) -> None: ...

class ListFailuresResponse(_message.Message):
    __slots__ = ("failures", "has_more")
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    failures: _containers.RepeatedCompositeFieldContainer[Failure]
    has_more: bool
    def __init__(self, failures: _Optional[_Iterable[_Union[Failure, _Mapping]]] = ..., has_more: _Optional[bool] = ...) -> None: ...

class RecordReference(_message.Message):
    __slots__ = ("record_type", "record_id", "record_version")
    RECORD_TYPE_FIELD_NUMBER: _ClassVar[int]
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_VERSION_FIELD_NUMBER: _ClassVar[int]
    record_type: str
    record_id: str
    record_version: int
    def __init__(self, record_type: _Optional[str] = ..., record_id: _Optional[str] = ..., record_version: _Optional[int] = ...) -> None: ...

class Failure(_message.Message):
    __slots__ = ("ref", "source", "status", "status_name", "store_key", "kind", "contact_id", "account", "response_code", "error_code", "error", "attempts", "record", "failed_at", "created_at", "partition_key", "sequence", "merged_into", "dedupe_key", "note")
    REF_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_NAME_FIELD_NUMBER: _ClassVar[int]
    STORE_KEY_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CONTACT_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    FAILED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    PARTITION_KEY_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MERGED_INTO_FIELD_NUMBER: _ClassVar[int]
    DEDUPE_KEY_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    ref: str
    source: FailureSource
    status: FailureStatus
    status_name: str
    store_key: str
    kind: str
    contact_id: str
    account: str
    response_code: int
    error_code: str
    error: str
    attempts: int
    record: RecordReference
    failed_at: _timestamp_pb2.Timestamp
    created_at: _timestamp_pb2.Timestamp
    partition_key: str
    sequence: int
    merged_into: str
    dedupe_key: str
    note: str
    def __init__(self, ref: _Optional[str] = ..., source: _Optional[_Union[FailureSource, str]] = ..., status: _Optional[_Union[FailureStatus, str]] = ..., status_name: _Optional[str] = ..., store_key: _Optional[str] = ..., kind: _Optional[str] = ..., contact_id: _Optional[str] = ..., account: _Optional[str] = ..., response_code: _Optional[int] = ..., error_code: _Optional[str] = ..., error: _Optional[str] = ..., attempts: _Optional[int] = ..., record: _Optional[_Union[RecordReference, _Mapping]] = ..., failed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., partition_key: _Optional[str] = ..., sequence: _Optional[int] = ..., merged_into: _Optional[str] = ..., dedupe_key: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class DeliveryAttempt(_message.Message):
    __slots__ = ("attempt", "outcome", "response_code", "error", "worker", "started_at", "finished_at")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    outcome: str
    response_code: int
    error: str
    worker: str
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    def __init__(self, attempt: _Optional[int] = ..., outcome: _Optional[str] = ..., response_code: _Optional[int] = ..., error: _Optional[str] = ..., worker: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RejectedViolation(_message.Message):
    __slots__ = ("field", "description")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    field: str
    description: str
    def __init__(self, field: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class GetFailureRequest(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: str
    def __init__(self, ref: _Optional[str] = ...) -> None: ...

class GetFailureResponse(_message.Message):
    __slots__ = ("failure", "attempts", "violations")
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    failure: Failure
    attempts: _containers.RepeatedCompositeFieldContainer[DeliveryAttempt]
    violations: _containers.RepeatedCompositeFieldContainer[RejectedViolation]
    def __init__(self, failure: _Optional[_Union[Failure, _Mapping]] = ..., attempts: _Optional[_Iterable[_Union[DeliveryAttempt, _Mapping]]] = ..., violations: _Optional[_Iterable[_Union[RejectedViolation, _Mapping]]] = ...) -> None: ...

class RedriveResult(_message.Message):
    __slots__ = ("ref", "outcome", "status_name", "message")
    REF_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    STATUS_NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ref: str
    outcome: RedriveOutcome
    status_name: str
    message: str
    def __init__(self, ref: _Optional[str] = ..., outcome: _Optional[_Union[RedriveOutcome, str]] = ..., status_name: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class RetryFailuresRequest(_message.Message):
    __slots__ = ("refs", "all_matching", "dry_run", "operator", "reason")
    REFS_FIELD_NUMBER: _ClassVar[int]
    ALL_MATCHING_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    refs: _containers.RepeatedScalarFieldContainer[str]
    all_matching: FailureFilter
    dry_run: bool
    operator: str
    reason: str
    def __init__(self, refs: _Optional[_Iterable[str]] = ..., all_matching: _Optional[_Union[FailureFilter, _Mapping]] = ..., dry_run: _Optional[bool] = ..., operator: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RetryFailuresResponse(_message.Message):
    __slots__ = ("results", "changed", "has_more")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[RedriveResult]
    changed: int
    has_more: bool
    def __init__(self, results: _Optional[_Iterable[_Union[RedriveResult, _Mapping]]] = ..., changed: _Optional[int] = ..., has_more: _Optional[bool] = ...) -> None: ...

class SkipFailuresRequest(_message.Message):
    __slots__ = ("refs", "all_matching", "dry_run", "operator", "reason")
    REFS_FIELD_NUMBER: _ClassVar[int]
    ALL_MATCHING_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    refs: _containers.RepeatedScalarFieldContainer[str]
    all_matching: FailureFilter
    dry_run: bool
    operator: str
    reason: str
    def __init__(self, refs: _Optional[_Iterable[str]] = ..., all_matching: _Optional[_Union[FailureFilter, _Mapping]] = ..., dry_run: _Optional[bool] = ..., operator: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SkipFailuresResponse(_message.Message):
    __slots__ = ("results", "changed", "has_more")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[RedriveResult]
    changed: int
    has_more: bool
    def __init__(self, results: _Optional[_Iterable[_Union[RedriveResult, _Mapping]]] = ..., changed: _Optional[int] = ..., has_more: _Optional[bool] = ...) -> None: ...

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

class GetContactRequest(_message.Message):
    __slots__ = ("email", "customer_id", "mobile_number", "contact_id", "store_key", "message_limit", "trigger_limit")
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    MOBILE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    CONTACT_ID_FIELD_NUMBER: _ClassVar[int]
    STORE_KEY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_LIMIT_FIELD_NUMBER: _ClassVar[int]
    email: str
    customer_id: str
    mobile_number: str
    contact_id: str
    store_key: str
    message_limit: int
    trigger_limit: int
    def __init__(self, email: _Optional[str] = ..., customer_id: _Optional[str] = ..., mobile_number: _Optional[str] = ..., contact_id: _Optional[str] = ..., store_key: _Optional[str] = ..., message_limit: _Optional[int] = ..., trigger_limit: _Optional[int] = ...) -> None: ...

class GetContactResponse(_message.Message):
    __slots__ = ("contact_id", "account", "dotdigital_contact_id", "email", "mobile_number", "identifiers", "conflicts", "fields", "channels", "lists", "pending_messages", "recent_messages", "more_messages", "triggers", "more_triggers", "created_at", "updated_at")
    CONTACT_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    DOTDIGITAL_CONTACT_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    MOBILE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    CONFLICTS_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    LISTS_FIELD_NUMBER: _ClassVar[int]
    PENDING_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    RECENT_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MORE_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TRIGGERS_FIELD_NUMBER: _ClassVar[int]
    MORE_TRIGGERS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    contact_id: str
    account: str
    dotdigital_contact_id: int
    email: str
    mobile_number: str
    identifiers: _containers.RepeatedCompositeFieldContainer[ContactIdentifierEntry]
    conflicts: _containers.RepeatedCompositeFieldContainer[ContactConflictEntry]
    fields: _containers.RepeatedCompositeFieldContainer[ContactFieldEntry]
    channels: _containers.RepeatedCompositeFieldContainer[ContactChannelEntry]
    lists: _containers.RepeatedCompositeFieldContainer[ContactListEntry]
    pending_messages: _containers.RepeatedCompositeFieldContainer[ContactMessageEntry]
    recent_messages: _containers.RepeatedCompositeFieldContainer[ContactMessageEntry]
    more_messages: bool
    triggers: _containers.RepeatedCompositeFieldContainer[Trigger]
    more_triggers: bool
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, contact_id: _Optional[str] = ..., account: _Optional[str] = ..., dotdigital_contact_id: _Optional[int] = ..., email: _Optional[str] = ..., mobile_number: _Optional[str] = ..., identifiers: _Optional[_Iterable[_Union[ContactIdentifierEntry, _Mapping]]] = ..., conflicts: _Optional[_Iterable[_Union[ContactConflictEntry, _Mapping]]] = ..., fields: _Optional[_Iterable[_Union[ContactFieldEntry, _Mapping]]] = ..., channels: _Optional[_Iterable[_Union[ContactChannelEntry, _Mapping]]] = ..., lists: _Optional[_Iterable[_Union[ContactListEntry, _Mapping]]] = ..., pending_messages: _Optional[_Iterable[_Union[ContactMessageEntry, _Mapping]]] = ..., recent_messages: _Optional[_Iterable[_Union[ContactMessageEntry, _Mapping]]] = ..., more_messages: _Optional[bool] = ..., triggers: _Optional[_Iterable[_Union[Trigger, _Mapping]]] = ..., more_triggers: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ContactIdentifierEntry(_message.Message):
    __slots__ = ("kind", "value", "created_at")
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    kind: str
    value: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, kind: _Optional[str] = ..., value: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ContactConflictEntry(_message.Message):
    __slots__ = ("id", "kind", "role", "other_contact_id", "rule", "value_hash", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    OTHER_CONTACT_ID_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    VALUE_HASH_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: int
    kind: str
    role: str
    other_contact_id: str
    rule: str
    value_hash: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[int] = ..., kind: _Optional[str] = ..., role: _Optional[str] = ..., other_contact_id: _Optional[str] = ..., rule: _Optional[str] = ..., value_hash: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ContactMessageOutcome(_message.Message):
    __slots__ = ("ref", "status", "response_code", "delivered_at")
    REF_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_CODE_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_AT_FIELD_NUMBER: _ClassVar[int]
    ref: str
    status: str
    response_code: int
    delivered_at: _timestamp_pb2.Timestamp
    def __init__(self, ref: _Optional[str] = ..., status: _Optional[str] = ..., response_code: _Optional[int] = ..., delivered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ContactFieldEntry(_message.Message):
    __slots__ = ("field", "value_json", "source_ref", "source_version", "source_time", "updated_at", "message")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    VALUE_JSON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_REF_FIELD_NUMBER: _ClassVar[int]
    SOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    field: str
    value_json: str
    source_ref: str
    source_version: int
    source_time: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    message: ContactMessageOutcome
    def __init__(self, field: _Optional[str] = ..., value_json: _Optional[str] = ..., source_ref: _Optional[str] = ..., source_version: _Optional[int] = ..., source_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message: _Optional[_Union[ContactMessageOutcome, _Mapping]] = ...) -> None: ...

class ContactChannelEntry(_message.Message):
    __slots__ = ("channel", "dotdigital_status", "dotdigital_status_at", "shop_consent", "shop_consent_at")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    DOTDIGITAL_STATUS_FIELD_NUMBER: _ClassVar[int]
    DOTDIGITAL_STATUS_AT_FIELD_NUMBER: _ClassVar[int]
    SHOP_CONSENT_FIELD_NUMBER: _ClassVar[int]
    SHOP_CONSENT_AT_FIELD_NUMBER: _ClassVar[int]
    channel: str
    dotdigital_status: str
    dotdigital_status_at: _timestamp_pb2.Timestamp
    shop_consent: str
    shop_consent_at: _timestamp_pb2.Timestamp
    def __init__(self, channel: _Optional[str] = ..., dotdigital_status: _Optional[str] = ..., dotdigital_status_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., shop_consent: _Optional[str] = ..., shop_consent_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ContactListEntry(_message.Message):
    __slots__ = ("list_id", "names", "member", "since", "message")
    LIST_ID_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    list_id: int
    names: _containers.RepeatedScalarFieldContainer[str]
    member: bool
    since: _timestamp_pb2.Timestamp
    message: ContactMessageOutcome
    def __init__(self, list_id: _Optional[int] = ..., names: _Optional[_Iterable[str]] = ..., member: _Optional[bool] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message: _Optional[_Union[ContactMessageOutcome, _Mapping]] = ...) -> None: ...

class ContactMessageEntry(_message.Message):
    __slots__ = ("ref", "kind", "status", "sequence", "store_key", "record", "attempts", "response_code", "error", "merged_into", "created_at", "next_attempt_at", "delivered_at", "attempt_log")
    REF_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STORE_KEY_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MERGED_INTO_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_AT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_LOG_FIELD_NUMBER: _ClassVar[int]
    ref: str
    kind: str
    status: str
    sequence: int
    store_key: str
    record: RecordReference
    attempts: int
    response_code: int
    error: str
    merged_into: str
    created_at: _timestamp_pb2.Timestamp
    next_attempt_at: _timestamp_pb2.Timestamp
    delivered_at: _timestamp_pb2.Timestamp
    attempt_log: _containers.RepeatedCompositeFieldContainer[DeliveryAttempt]
    def __init__(self, ref: _Optional[str] = ..., kind: _Optional[str] = ..., status: _Optional[str] = ..., sequence: _Optional[int] = ..., store_key: _Optional[str] = ..., record: _Optional[_Union[RecordReference, _Mapping]] = ..., attempts: _Optional[int] = ..., response_code: _Optional[int] = ..., error: _Optional[str] = ..., merged_into: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_attempt_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., delivered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempt_log: _Optional[_Iterable[_Union[DeliveryAttempt, _Mapping]]] = ...) -> None: ...
