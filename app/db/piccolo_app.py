import os

from piccolo.conf.apps import AppConfig

from app.db import tables

APP_CONFIG = AppConfig(
    app_name="mailrelay",
    migrations_folder_path=os.path.join(os.path.dirname(__file__), "migrations"),
    table_classes=[
        tables.AppUser,
        tables.UserSession,
        tables.LoginThrottle,
        tables.SenderDomain,
        tables.RelayRoute,
        tables.TrustedNetwork,
        tables.ConfigVersion,
        tables.AppliedVersion,
        tables.AuditLog,
        tables.MailLog,
        tables.RejectionLog,
        tables.ClusterLock,
        tables.ApiToken,
        tables.LogCursor,
        tables.LogMessage,
        tables.VrrpEvent,
        tables.SyncRun,
        tables.QueueImport,
        tables.Promotion,
        tables.SecondFactor,
        tables.RecoveryCode,
        tables.SecondFactorPolicy,
        tables.SessionSecondFactor,
        tables.SecondFactorThrottle,
    ],
    migration_dependencies=[],
    commands=[],
)
