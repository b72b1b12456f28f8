import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConsentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONSENT_STATUS_UNSPECIFIED: _ClassVar[ConsentStatus]
    CONSENT_STATUS_SUBSCRIBED: _ClassVar[ConsentStatus]
    CONSENT_STATUS_UNSUBSCRIBED: _ClassVar[ConsentStatus]

class OptInType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPT_IN_TYPE_UNSPECIFIED: _ClassVar[OptInType]
    OPT_IN_TYPE_SINGLE: _ClassVar[OptInType]
    OPT_IN_TYPE_DOUBLE: _ClassVar[OptInType]
    OPT_IN_TYPE_VERIFIED_DOUBLE: _ClassVar[OptInType]

class Processing(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROCESSING_UNSPECIFIED: _ClassVar[Processing]
    PROCESSING_APPLIED: _ClassVar[Processing]
    PROCESSING_QUEUED: _ClassVar[Processing]

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    PRIORITY_LIVE: _ClassVar[Priority]
    PRIORITY_BACKFILL: _ClassVar[Priority]

class EventOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_OUTCOME_UNSPECIFIED: _ClassVar[EventOutcome]
    EVENT_OUTCOME_APPLIED: _ClassVar[EventOutcome]
    EVENT_OUTCOME_DUPLICATE: _ClassVar[EventOutcome]
    EVENT_OUTCOME_STALE: _ClassVar[EventOutcome]
    EVENT_OUTCOME_IGNORED: _ClassVar[EventOutcome]
CONSENT_STATUS_UNSPECIFIED: ConsentStatus
CONSENT_STATUS_SUBSCRIBED: ConsentStatus
CONSENT_STATUS_UNSUBSCRIBED: ConsentStatus
OPT_IN_TYPE_UNSPECIFIED: OptInType
OPT_IN_TYPE_SINGLE: OptInType
OPT_IN_TYPE_DOUBLE: OptInType
OPT_IN_TYPE_VERIFIED_DOUBLE: OptInType
PROCESSING_UNSPECIFIED: Processing
PROCESSING_APPLIED: Processing
PROCESSING_QUEUED: Processing
PRIORITY_UNSPECIFIED: Priority
PRIORITY_LIVE: Priority
PRIORITY_BACKFILL: Priority
EVENT_OUTCOME_UNSPECIFIED: EventOutcome
EVENT_OUTCOME_APPLIED: EventOutcome
EVENT_OUTCOME_DUPLICATE: EventOutcome
EVENT_OUTCOME_STALE: EventOutcome
EVENT_OUTCOME_IGNORED: EventOutcome

class SyncContactRequest(_message.Message):
    __slots__ = ("store_key", "identity", "profile", "consent", "lists", "source", "preferences")
    STORE_KEY_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CONSENT_FIELD_NUMBER: _ClassVar[int]
    LISTS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PREFERENCES_FIELD_NUMBER: _ClassVar[int]
    store_key: str
    identity: ContactIdentity
    profile: ContactProfile
    consent: ChannelConsents
    lists: _containers.RepeatedCompositeFieldContainer[ListMembership]
    source: SourceInfo
    preferences: _containers.RepeatedCompositeFieldContainer[PreferenceChoice]
    def __init__(self, store_key: _Optional[str] = ..., identity: _Optional[_Union[ContactIdentity, _Mapping]] = ..., profile: _Optional[_Union[ContactProfile, _Mapping]] = ..., consent: _Optional[_Union[ChannelConsents, _Mapping]] = ..., lists: _Optional[_Iterable[_Union[ListMembership, _Mapping]]] = ..., source: _Optional[_Union[SourceInfo, _Mapping]] = ..., preferences: _Optional[_Iterable[_Union[PreferenceChoice, _Mapping]]] = ...) -> None: ...

class PreferenceChoice(_message.Message):
    __slots__ = ("preference_key", "opted_in")
    PREFERENCE_KEY_FIELD_NUMBER: _ClassVar[int]
    OPTED_IN_FIELD_NUMBER: _ClassVar[int]
    preference_key: str
    opted_in: bool
    def __init__(self, preference_key: _Optional[str] = ..., opted_in: _Optional[bool] = ...) -> None: ...

class ContactIdentity(_message.Message):
    __slots__ = ("customer_id", "email", "mobile_number", "anonymous_id")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    MOBILE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    ANONYMOUS_ID_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    email: str
    mobile_number: str
    anonymous_id: str
    def __init__(self, customer_id: _Optional[str] = ..., email: _Optional[str] = ..., mobile_number: _Optional[str] = ..., anonymous_id: _Optional[str] = ...) -> None: ...

class ContactProfile(_message.Message):
    __slots__ = ("first_name", "last_name", "middle_name", "title", "date_of_birth", "company_name", "customer_group", "locale", "currency", "billing_address", "shipping_address", "custom_fields")
    FIRST_NAME_FIELD_NUMBER: _ClassVar[int]
    LAST_NAME_FIELD_NUMBER: _ClassVar[int]
    MIDDLE_NAME_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    DATE_OF_BIRTH_FIELD_NUMBER: _ClassVar[int]
    COMPANY_NAME_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    LOCALE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    BILLING_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SHIPPING_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_FIELDS_FIELD_NUMBER: _ClassVar[int]
    first_name: str
    last_name: str
    middle_name: str
    title: str
    date_of_birth: str
    company_name: str
    customer_group: str
    locale: str
    currency: str
    billing_address: Address
    shipping_address: Address
    custom_fields: _struct_pb2.Struct
    def __init__(self, first_name: _Optional[str] = ..., last_name: _Optional[str] = ..., middle_name: _Optional[str] = ..., title: _Optional[str] = ..., date_of_birth: _Optional[str] = ..., company_name: _Optional[str] = ..., customer_group: _Optional[str] = ..., locale: _Optional[str] = ..., currency: _Optional[str] = ..., billing_address: _Optional[_Union[Address, _Mapping]] = ..., shipping_address: _Optional[_Union[Address, _Mapping]] = ..., custom_fields: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Address(_message.Message):
    __slots__ = ("street_line1", "street_line2", "city", "postal_code", "region", "country", "phone")
    STREET_LINE1_FIELD_NUMBER: _ClassVar[int]
    STREET_LINE2_FIELD_NUMBER: _ClassVar[int]
    CITY_FIELD_NUMBER: _ClassVar[int]
    POSTAL_CODE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    PHONE_FIELD_NUMBER: _ClassVar[int]
    street_line1: str
    street_line2: str
    city: str
    postal_code: str
    region: str
    country: str
    phone: str
    def __init__(self, street_line1: _Optional[str] = ..., street_line2: _Optional[str] = ..., city: _Optional[str] = ..., postal_code: _Optional[str] = ..., region: _Optional[str] = ..., country: _Optional[str] = ..., phone: _Optional[str] = ...) -> None: ...

class ChannelConsents(_message.Message):
    __slots__ = ("email", "sms")
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    SMS_FIELD_NUMBER: _ClassVar[int]
    email: ChannelConsent
    sms: ChannelConsent
    def __init__(self, email: _Optional[_Union[ChannelConsent, _Mapping]] = ..., sms: _Optional[_Union[ChannelConsent, _Mapping]] = ...) -> None: ...

class ChannelConsent(_message.Message):
    __slots__ = ("status", "opt_in_type", "records", "decided_at")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OPT_IN_TYPE_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_FIELD_NUMBER: _ClassVar[int]
    status: ConsentStatus
    opt_in_type: OptInType
    records: _containers.RepeatedCompositeFieldContainer[ConsentRecord]
    decided_at: _timestamp_pb2.Timestamp
    def __init__(self, status: _Optional[_Union[ConsentStatus, str]] = ..., opt_in_type: _Optional[_Union[OptInType, str]] = ..., records: _Optional[_Iterable[_Union[ConsentRecord, _Mapping]]] = ..., decided_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ConsentRecord(_message.Message):
    __slots__ = ("text", "consented_at", "url", "ip_address", "user_agent")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CONSENTED_AT_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    IP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    text: str
    consented_at: _timestamp_pb2.Timestamp
    url: str
    ip_address: str
    user_agent: str
    def __init__(self, text: _Optional[str] = ..., consented_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., url: _Optional[str] = ..., ip_address: _Optional[str] = ..., user_agent: _Optional[str] = ...) -> None: ...

class ListMembership(_message.Message):
    __slots__ = ("list_key", "member")
    LIST_KEY_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    list_key: str
    member: bool
    def __init__(self, list_key: _Optional[str] = ..., member: _Optional[bool] = ...) -> None: ...

class SourceInfo(_message.Message):
    __slots__ = ("resource_type", "resource_id", "version", "modified_at")
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_AT_FIELD_NUMBER: _ClassVar[int]
    resource_type: str
    resource_id: str
    version: int
    modified_at: _timestamp_pb2.Timestamp
    def __init__(self, resource_type: _Optional[str] = ..., resource_id: _Optional[str] = ..., version: _Optional[int] = ..., modified_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SyncContactResponse(_message.Message):
    __slots__ = ("contact_id", "dotdigital_contact_id", "changed", "outbox_message_ids", "stale_fields", "created", "conflicts", "suppression_reasons", "withheld_fields")
    CONTACT_ID_FIELD_NUMBER: _ClassVar[int]
    DOTDIGITAL_CONTACT_ID_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELDS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    CONFLICTS_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSION_REASONS_FIELD_NUMBER: _ClassVar[int]
    WITHHELD_FIELDS_FIELD_NUMBER: _ClassVar[int]
    contact_id: str
    dotdigital_contact_id: int
    changed: bool
    outbox_message_ids: _containers.RepeatedScalarFieldContainer[int]
    stale_fields: _containers.RepeatedScalarFieldContainer[str]
    created: bool
    conflicts: _containers.RepeatedCompositeFieldContainer[IdentityConflict]
    suppression_reasons: _containers.RepeatedScalarFieldContainer[str]
    withheld_fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, contact_id: _Optional[str] = ..., dotdigital_contact_id: _Optional[int] = ..., changed: _Optional[bool] = ..., outbox_message_ids: _Optional[_Iterable[int]] = ..., stale_fields: _Optional[_Iterable[str]] = ..., created: _Optional[bool] = ..., conflicts: _Optional[_Iterable[_Union[IdentityConflict, _Mapping]]] = ..., suppression_reasons: _Optional[_Iterable[str]] = ..., withheld_fields: _Optional[_Iterable[str]] = ...) -> None: ...

class IdentityConflict(_message.Message):
    __slots__ = ("kind", "owner_contact_id", "rule")
    KIND_FIELD_NUMBER: _ClassVar[int]
    OWNER_CONTACT_ID_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    owner_contact_id: str
    rule: str
    def __init__(self, kind: _Optional[str] = ..., owner_contact_id: _Optional[str] = ..., rule: _Optional[str] = ...) -> None: ...

class TrackEventRequest(_message.Message):
    __slots__ = ("store_key", "commercetools_delivery", "behavioural_event", "priority", "processing")
    STORE_KEY_FIELD_NUMBER: _ClassVar[int]
    COMMERCETOOLS_DELIVERY_FIELD_NUMBER: _ClassVar[int]
    BEHAVIOURAL_EVENT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_FIELD_NUMBER: _ClassVar[int]
    store_key: str
    commercetools_delivery: bytes
    behavioural_event: BehaviouralEvent
    priority: Priority
    processing: Processing
    def __init__(self, store_key: _Optional[str] = ..., commercetools_delivery: _Optional[bytes] = ..., behavioural_event: _Optional[_Union[BehaviouralEvent, _Mapping]] = ..., priority: _Optional[_Union[Priority, str]] = ..., processing: _Optional[_Union[Processing, str]] = ...) -> None: ...

class BehaviouralEvent(_message.Message):
    __slots__ = ("event_id", "product_viewed", "cart_updated", "custom_event", "identity", "occurred_at", "locale", "currency")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_VIEWED_FIELD_NUMBER: _ClassVar[int]
    CART_UPDATED_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_EVENT_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    LOCALE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    product_viewed: ProductViewed
    cart_updated: CartUpdated
    custom_event: CustomEvent
    identity: ContactIdentity
    occurred_at: _timestamp_pb2.Timestamp
    locale: str
    currency: str
    def __init__(self, event_id: _Optional[str] = ..., product_viewed: _Optional[_Union[ProductViewed, _Mapping]] = ..., cart_updated: _Optional[_Union[CartUpdated, _Mapping]] = ..., custom_event: _Optional[_Union[CustomEvent, _Mapping]] = ..., identity: _Optional[_Union[ContactIdentity, _Mapping]] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., locale: _Optional[str] = ..., currency: _Optional[str] = ...) -> None: ...

class ProductViewed(_message.Message):
    __slots__ = ("product_id", "sku", "properties")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    sku: str
    properties: _struct_pb2.Struct
    def __init__(self, product_id: _Optional[str] = ..., sku: _Optional[str] = ..., properties: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class CartUpdated(_message.Message):
    __slots__ = ("cart_id", "cart_version", "cart")
    CART_ID_FIELD_NUMBER: _ClassVar[int]
    CART_VERSION_FIELD_NUMBER: _ClassVar[int]
    CART_FIELD_NUMBER: _ClassVar[int]
    cart_id: str
    cart_version: int
    cart: _struct_pb2.Struct
    def __init__(self, cart_id: _Optional[str] = ..., cart_version: _Optional[int] = ..., cart: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class CustomEvent(_message.Message):
    __slots__ = ("name", "properties")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    properties: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., properties: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class TrackEventResponse(_message.Message):
    __slots__ = ("outbox_message_ids", "duplicate", "stale", "notifications", "queued")
    OUTBOX_MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    NOTIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    outbox_message_ids: _containers.RepeatedScalarFieldContainer[int]
    duplicate: bool
    stale: bool
    notifications: _containers.RepeatedCompositeFieldContainer[NotificationResult]
    queued: bool
    def __init__(self, outbox_message_ids: _Optional[_Iterable[int]] = ..., duplicate: _Optional[bool] = ..., stale: _Optional[bool] = ..., notifications: _Optional[_Iterable[_Union[NotificationResult, _Mapping]]] = ..., queued: _Optional[bool] = ...) -> None: ...

class NotificationResult(_message.Message):
    __slots__ = ("dedupe_key", "resource_type", "resource_id", "message_type", "outcome", "reason", "contact_id", "outbox_message_ids", "store_keys")
    DEDUPE_KEY_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CONTACT_ID_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    STORE_KEYS_FIELD_NUMBER: _ClassVar[int]
    dedupe_key: str
    resource_type: str
    resource_id: str
    message_type: str
    outcome: EventOutcome
    reason: str
    contact_id: str
    outbox_message_ids: _containers.RepeatedScalarFieldContainer[int]
    store_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, dedupe_key: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_id: _Optional[str] = ..., message_type: _Optional[str] = ..., outcome: _Optional[_Union[EventOutcome, str]] = ..., reason: _Optional[str] = ..., contact_id: _Optional[str] = ..., outbox_message_ids: _Optional[_Iterable[int]] = ..., store_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class TrackEventBatchRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[TrackEventRequest]
    def __init__(self, events: _Optional[_Iterable[_Union[TrackEventRequest, _Mapping]]] = ...) -> None: ...

class TrackEventBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TrackEventResult]
    def __init__(self, results: _Optional[_Iterable[_Union[TrackEventResult, _Mapping]]] = ...) -> None: ...

class TrackEventResult(_message.Message):
    __slots__ = ("index", "code", "message", "retryable", "response")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    index: int
    code: int
    message: str
    retryable: bool
    response: TrackEventResponse
    def __init__(self, index: _Optional[int] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., retryable: _Optional[bool] = ..., response: _Optional[_Union[TrackEventResponse, _Mapping]] = ...) -> None: ...

class ExportCatalogRequest(_message.Message):
    __slots__ = ("store_key", "collection_name", "modified_since", "include_categories")
    STORE_KEY_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_NAME_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_SINCE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    store_key: str
    collection_name: str
    modified_since: _timestamp_pb2.Timestamp
    include_categories: bool
    def __init__(self, store_key: _Optional[str] = ..., collection_name: _Optional[str] = ..., modified_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., include_categories: _Optional[bool] = ...) -> None: ...

class ExportCatalogResponse(_message.Message):
    __slots__ = ("products_read", "records_enqueued", "records_rejected", "done")
    PRODUCTS_READ_FIELD_NUMBER: _ClassVar[int]
    RECORDS_ENQUEUED_FIELD_NUMBER: _ClassVar[int]
    RECORDS_REJECTED_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    products_read: int
    records_enqueued: int
    records_rejected: int
    done: bool
    def __init__(self, products_read: _Optional[int] = ..., records_enqueued: _Optional[int] = ..., records_rejected: _Optional[int] = ..., done: _Optional[bool] = ...) -> None: ...
