"""Every table, imported here so Alembic and the app see one complete metadata."""

from app.models.api_key import ApiKey
from app.models.appointment import Appointment
from app.models.broadcast import Broadcast, BroadcastLane
from app.models.conversation import Conversation, ConversationRouting
from app.models.delivery_report import DeliveryReport
from app.models.dispatch_lease import DispatchLease
from app.models.email_address import EmailAddress, EmailAddressEvent
from app.models.event import Event
from app.models.experiment import Experiment
from app.models.experiment_enrolment_day import ExperimentEnrolmentDay
from app.models.experiment_group import ExperimentGroup
from app.models.experiment_membership import ExperimentMembership
from app.models.gateway import Gateway
from app.models.group import Group, GroupMember, GroupStaffMember
from app.models.imo_authorization import ImoAuthorization
from app.models.imo_invitation_batch import ImoInvitationBatch
from app.models.imo_invitation_round import ImoInvitationRound
from app.models.imo_round_pause import ImoRoundPause
from app.models.inbound_email import InboundEmail
from app.models.message import Message
from app.models.notification import DeliveryAttempt, Notification
from app.models.notification_count import (
    NotificationCount,
    NotificationCountDaily,
    NotificationCountDelta,
)
from app.models.operator import Operator, OperatorSession
from app.models.patient import Patient
from app.models.reminder_plan import ReminderPlan
from app.models.staff import StaffMember
from app.models.switch import Switch
from app.models.template import Template
from app.models.trigger_rule import TriggerRule
from app.models.webhook import (
    WebhookDelivery,
    WebhookDeliveryCount,
    WebhookDeliveryCountDelta,
    WebhookEndpoint,
    WebhookEvent,
)

__all__ = [
    "ApiKey",
    "Appointment",
    "Broadcast",
    "BroadcastLane",
    "Conversation",
    "ConversationRouting",
    "DeliveryAttempt",
    "DeliveryReport",
    "DispatchLease",
    "EmailAddress",
    "EmailAddressEvent",
    "Event",
    "Experiment",
    "ExperimentEnrolmentDay",
    "ExperimentGroup",
    "ExperimentMembership",
    "Gateway",
    "Group",
    "GroupMember",
    "GroupStaffMember",
    "ImoAuthorization",
    "ImoInvitationBatch",
    "ImoInvitationRound",
    "ImoRoundPause",
    "InboundEmail",
    "Message",
    "Notification",
    "NotificationCount",
    "NotificationCountDaily",
    "NotificationCountDelta",
    "Operator",
    "OperatorSession",
    "Patient",
    "ReminderPlan",
    "StaffMember",
    "Switch",
    "Template",
    "TriggerRule",
    "WebhookDelivery",
    "WebhookDeliveryCount",
    "WebhookDeliveryCountDelta",
    "WebhookEndpoint",
    "WebhookEvent",
]
