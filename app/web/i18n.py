"""English and German. English text is the key; German is looked up, English is the fallback."""

from __future__ import annotations

from collections.abc import Callable

LANGUAGES = ("en", "de")

GERMAN: dict[str, str] = {
    "Log in": "Anmelden",
    "Log out": "Abmelden",
    "Username": "Benutzername",
    "Password": "Passwort",
    "Current password": "Aktuelles Passwort",
    "New password": "Neues Passwort",
    "Repeat the new password": "Neues Passwort wiederholen",
    "Change password": "Passwort ändern",
    "You must change your password before you continue.": "Sie müssen Ihr Passwort ändern, bevor Sie fortfahren.",
    "The two new passwords differ.": "Die beiden neuen Passwörter stimmen nicht überein.",
    "Wrong username or password.": "Benutzername oder Passwort falsch.",
    "Too many failed logins: this account is locked for a while. Try again later.": "Zu viele Fehlversuche: Dieses Konto ist vorübergehend gesperrt. "
    "Versuchen Sie es später erneut.",
    "Too many failed logins from your address: try again later.": "Zu viele Fehlversuche von Ihrer Adresse: Versuchen Sie es später erneut.",
    "Dashboard": "Übersicht",
    "Sender domains": "Absenderdomains",
    "Sender domain": "Absenderdomain",
    "Routes": "Routen",
    "Route": "Route",
    "Trusted networks": "Vertrauenswürdige Netze",
    "Network": "Netz",
    "Users": "Benutzer",
    "API tokens": "API-Tokens",
    "Audit log": "Audit-Protokoll",
    "Config versions": "Konfigurationsversionen",
    "Comment": "Kommentar",
    "Add": "Hinzufügen",
    "Delete": "Löschen",
    "Save": "Speichern",
    "Edit": "Bearbeiten",
    "Cancel": "Abbrechen",
    "Role": "Rolle",
    "Language": "Sprache",
    "Browser default": "Browser-Standard",
    "Relay host": "Relay-Host",
    "Port": "Port",
    "TLS mode": "TLS-Modus",
    "SMTP AUTH user": "SMTP-AUTH-Benutzer",
    "SMTP AUTH password": "SMTP-AUTH-Passwort",
    "Leave empty to keep the stored password.": "Leer lassen, um das gespeicherte Passwort zu behalten.",
    "Remove the stored password": "Gespeichertes Passwort entfernen",
    "set": "gesetzt",
    "none": "keine",
    "No route: mail goes out directly to the recipient's MX.": "Keine Route: Mail geht direkt an den MX des Empfängers.",
    "Test configuration": "Konfiguration testen",
    "Apply changes": "Änderungen übernehmen",
    "Version": "Version",
    "Author": "Autor",
    "Time": "Zeit",
    "View": "Ansehen",
    "Compare": "Vergleichen",
    "Roll back to this version": "Auf diese Version zurücksetzen",
    "Latest version": "Neueste Version",
    "Applied on this node": "Auf diesem Knoten aktiv",
    "not applied yet": "noch nicht übernommen",
    "The configuration is valid.": "Die Konfiguration ist gültig.",
    "Problems": "Probleme",
    "Changes against the live maps": "Änderungen gegenüber den aktiven Maps",
    "No changes against the live maps.": "Keine Änderungen gegenüber den aktiven Maps.",
    "Applied version": "Übernommene Version",
    "Accepted": "Angenommen",
    "Delivered": "Zugestellt",
    "Deferred": "Zurückgestellt",
    "Bounced": "Unzustellbar",
    "Rejected": "Abgewiesen",
    "last hour": "letzte Stunde",
    "last 24 hours": "letzte 24 Stunden",
    "last %d days": "letzte %d Tage",
    "Recent rejects": "Letzte Abweisungen",
    "Client": "Client",
    "Sender": "Absender",
    "Recipient": "Empfänger",
    "Reason": "Grund",
    "No rejects recorded yet. Log ingestion fills this table.": "Noch keine Abweisungen erfasst. Die Log-Auswertung füllt diese Tabelle.",
    "No mail has been logged yet: these figures come from the Postfix log once log ingestion "
    "runs.": "Noch keine Mail protokolliert: Diese Zahlen stammen aus dem Postfix-Log, sobald "
    "die Log-Auswertung läuft.",
    "Actor": "Akteur",
    "Action": "Aktion",
    "Target": "Ziel",
    "Outcome": "Ergebnis",
    "Source IP": "Quell-IP",
    "Details": "Details",
    "Filter": "Filtern",
    "From": "Von",
    "Until": "Bis",
    "Newer": "Neuer",
    "Older": "Älter",
    "Nothing found.": "Nichts gefunden.",
    "Name": "Name",
    "Kind": "Art",
    "Created": "Erstellt",
    "Last used": "Zuletzt benutzt",
    "Revoked": "Widerrufen",
    "Revoke": "Widerrufen",
    "Create": "Erstellen",
    "Copy this token now: it is shown only once.": "Kopieren Sie dieses Token jetzt: Es wird nur einmal angezeigt.",
    "Initial password": "Erstes Passwort",
    "Reset password": "Passwort zurücksetzen",
    "Must change password": "Muss Passwort ändern",
    "Locked until": "Gesperrt bis",
    "yes": "ja",
    "no": "nein",
    "Forbidden": "Verboten",
    "Your role does not allow this.": "Ihre Rolle erlaubt das nicht.",
    "Not found": "Nicht gefunden",
    "Back": "Zurück",
    "Saved.": "Gespeichert.",
    "Deleted.": "Gelöscht.",
    "This node is a slave: the configuration is managed on the master at %s.": "Dieser Knoten ist ein Slave: Die Konfiguration wird auf dem Master unter %s verwaltet.",
    "Read-only view.": "Nur-Lese-Ansicht.",
    "Diff": "Unterschiede",
    "Choose two versions to compare.": "Wählen Sie zwei Versionen zum Vergleichen.",
    "Queue": "Warteschlange",
    "Queue ID": "Queue-ID",
    "Age": "Alter",
    "Size": "Größe",
    "Recipients": "Empfänger",
    "hold": "Anhalten",
    "release": "Freigeben",
    "delete": "Löschen",
    "requeue": "Neu einreihen",
    "flush": "Zustellen",
    "Flush the whole queue": "Gesamte Warteschlange zustellen",
    "The queue is empty.": "Die Warteschlange ist leer.",
    "first %d messages": "erste %d Nachrichten",
    "Node": "Knoten",
    "Logged in as %s (%s)": "Angemeldet als %s (%s)",
}


def translator(language: str) -> Callable[..., str]:
    table = GERMAN if language == "de" else {}

    def translate(text: str, *args: object) -> str:
        result = table.get(text, text)
        return result % args if args else result

    return translate


def from_accept_language(header: str | None) -> str:
    """The first supported language in an Accept-Language header, by quality."""
    choices: list[tuple[float, str]] = []
    for part in (header or "").split(","):
        lang, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        code = lang.strip().lower().split("-")[0]
        if code in LANGUAGES:
            choices.append((quality, code))
    return max(choices, key=lambda c: c[0])[1] if choices else "en"
