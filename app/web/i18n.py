"""English and German. English text is the key; German is looked up, English is the fallback."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from jinja2 import pass_context
from jinja2.runtime import Context

from app.messages import Message, plural

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
    "Wrong username or password, or too many attempts: wait a few minutes and try again.": "Benutzername oder Passwort falsch, oder zu viele Versuche: Warten Sie einige Minuten "
    "und versuchen Sie es erneut.",
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
    "It is dropped when the host, port or TLS mode change: type it again then.": "Es wird verworfen, wenn sich Host, Port oder TLS-Modus ändern: Geben Sie es dann erneut ein.",
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
    "last {n} day": "letzter {n} Tag",
    "last {n} days": "letzte {n} Tage",
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
    "{n} message is on hold: this node came back and could not ask its peer whether the peer already delivered it. Releasing it may deliver it twice.": "{n} Nachricht ist angehalten: Dieser Knoten ist zurückgekehrt und konnte seinen Partner nicht fragen, ob der Partner sie bereits zugestellt hat. Freigeben kann sie doppelt zustellen.",
    "{n} messages are on hold: this node came back and could not ask its peer which of them the peer already delivered. Releasing them may deliver some twice.": "{n} Nachrichten sind angehalten: Dieser Knoten ist zurückgekehrt und konnte seinen Partner nicht fragen, welche davon der Partner bereits zugestellt hat. Freigeben kann einige doppelt zustellen.",
    "Release the held mail": "Angehaltene Mail freigeben",
    "Message tracking": "Nachrichtenverfolgung",
    "Message": "Nachricht",
    "Search": "Suchen",
    "Status": "Status",
    "Delay": "Verzögerung",
    "running": "läuft",
    "not running": "läuft nicht",
    "Maps version": "Map-Version",
    "Traffic per hour (last 24 hours)": "Verkehr pro Stunde (letzte 24 Stunden)",
    "No traffic logged in the last 24 hours.": "In den letzten 24 Stunden kein Verkehr protokolliert.",
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
    "Route tools": "Routen-Werkzeuge",
    "Which route?": "Welche Route?",
    "Test a route": "Route testen",
    "Test these settings": "Diese Einstellungen testen",
    "Runs the route test with the settings above, without saving them. A stored password is only used for the stored host, port and TLS mode.": "Führt den Routentest mit den obigen Einstellungen aus, ohne sie zu speichern. Ein gespeichertes Passwort wird nur für den gespeicherten Host, Port und TLS-Modus verwendet.",
    "These settings differ from the stored route, and its password is only sent to the relay it was saved for: type the SMTP AUTH password to test them.": "Diese Einstellungen weichen von der gespeicherten Route ab, und deren Passwort wird nur an das Relay gesendet, für das es gespeichert wurde: Geben Sie das SMTP-AUTH-Passwort ein, um sie zu testen.",
    "SMTP AUTH needs a password.": "SMTP AUTH braucht ein Passwort.",
    "Test": "Testen",
    "What this node's Postfix does with an envelope sender and recipient, looked up in the maps of the applied config version the way Postfix looks them up.": "Was Postfix auf diesem Knoten mit einem Umschlag-Absender und -Empfänger macht, nachgeschlagen in den Maps der übernommenen Konfigurationsversion so, wie Postfix sie nachschlägt.",
    "Opens an SMTP session to the relay host with the stored settings: connect, EHLO, STARTTLS, certificate, AUTH, QUIT. No mail is sent.": "Öffnet eine SMTP-Sitzung zum Relay-Host mit den gespeicherten Einstellungen: Verbindung, EHLO, STARTTLS, Zertifikat, AUTH, QUIT. Es wird keine Mail gesendet.",
    "No sender domain has a route.": "Keine Absenderdomain hat eine Route.",
    "Envelope sender": "Umschlag-Absender",
    "Leave empty or write <> for the null sender.": "Leer lassen oder <> schreiben für den leeren Absender.",
    "allowed": "erlaubt",
    "rejected: sender domain not allowed": "abgewiesen: Absenderdomain nicht erlaubt",
    "rejected: the null sender <> is not allowed": "abgewiesen: Der leere Absender <> ist nicht erlaubt",
    "direct to the recipient's MX": "direkt an den MX des Empfängers",
    "default": "Standard",
    "Answered from config version %s, applied on this node.": "Antwort aus Konfigurationsversion %s, die auf diesem Knoten übernommen ist.",
    "Version %s is newer and not applied yet.": "Version %s ist neuer und noch nicht übernommen.",
    "Lookups": "Nachschlagen",
    "Map": "Map",
    "Keys tried, in order": "Versuchte Schlüssel, in Reihenfolge",
    "Match": "Treffer",
    "no match": "kein Treffer",
    "No config version has been applied on this node yet: there are no maps.": "Auf diesem Knoten ist noch keine Konfigurationsversion übernommen: Es gibt keine Maps.",
    "Route test": "Routentest",
    "All steps passed.": "Alle Schritte erfolgreich.",
    "The test found problems.": "Der Test hat Probleme gefunden.",
    "Step": "Schritt",
    "Result": "Ergebnis",
    "Latency": "Latenz",
    "failed": "fehlgeschlagen",
    "Server certificate": "Server-Zertifikat",
    "Subject": "Inhaber",
    "Issuer": "Aussteller",
    "Alternative names": "Alternative Namen",
    "Valid until": "Gültig bis",
    "expired": "abgelaufen",
    "Verifies against the system CA store": "Gültig gegenüber dem System-CA-Speicher",
    "not checked": "nicht geprüft",
    "The stored password does not decrypt with this node's key.": "Das gespeicherte Passwort lässt sich mit dem Schlüssel dieses Knotens nicht entschlüsseln.",
    "Cluster": "Cluster",
    "this node": "dieser Knoten",
    "Master version": "Master-Version",
    "local version": "lokale Version",
    "Runs version": "Aktive Version",
    "Since": "Seit",
    "since %s UTC": "seit %s UTC",
    "runs the master's version": "aktiv ist die Version des Masters",
    "runs another version than the master (%s)": "eine andere Version als der Master (%s) ist aktiv",
    "not heard from": "keine Meldung",
    "last heard %s UTC": "zuletzt gemeldet %s UTC",
    "not ready": "nicht bereit",
    "version %s not applied yet": "Version %s noch nicht übernommen",
    "Version %s is saved but not applied: no node runs it until Apply changes succeeds here.": "Version %s ist gespeichert, aber nicht übernommen: Kein Knoten verwendet sie, bis „Änderungen übernehmen“ hier gelingt.",
    "The nodes have run different config versions for %s: a node does not run what the master applied.": "Die Knoten verwenden seit %s unterschiedliche Konfigurationsversionen: Ein Knoten verwendet nicht, was der Master übernommen hat.",
    "This node is not ready: %s.": "Dieser Knoten ist nicht bereit: %s.",
    "no config version is applied on this node yet": "auf diesem Knoten ist noch keine Konfigurationsversion übernommen",
    "this node runs no version from the master yet": "dieser Knoten verwendet noch keine Version des Masters",
    "the master has not told this node what it runs yet": "der Master hat diesem Knoten noch nicht gemeldet, welche Version er verwendet",
    "this node runs master version %s, the master runs %s": "dieser Knoten verwendet Master-Version %s, der Master %s",
    "not reporting": "meldet sich nicht",
    "No node has applied a version yet.": "Noch kein Knoten hat eine Version übernommen.",
    "Cluster status": "Cluster-Status",
    "Both nodes: VRRP, VIP, queue sync and replication": "Beide Knoten: VRRP, VIP, Queue-Sync und Replikation",
    "unknown": "unbekannt",
    "%s ago": "vor %s",
    "frozen %s": "eingefroren %s",
    "%d files, %d bytes": "%d Dateien, %d Bytes",
    "Shadow copies": "Schattenkopien",
    "%d of the peer's held here": "%d des Partners hier gehalten",
    "unprotected mail: %d": "ungeschützte Mails: %d",
    "the last %s ago": "die letzte vor %s",
    "The shadow milter is not answering.": "Der Schatten-Milter antwortet nicht.",
    "Postfix answers 451 to every message until it is back.": "Postfix antwortet jeder Nachricht mit 451, bis er wieder läuft.",
    "Postfix accepts mail without a copy on the peer, and none of it is counted above.": "Postfix nimmt Mails ohne Kopie auf dem Partner an, und keine davon wird oben gezählt.",
    "accepted without a copy on the peer: lost if this node and its disk are lost before the next queue sync": "ohne Kopie auf dem Partner angenommen: verloren, wenn dieser Knoten samt Platte vor dem nächsten Queue-Sync ausfällt",
    "{n} message": "{n} Nachricht",
    "{n} messages": "{n} Nachrichten",
    "VRRP state": "VRRP-Zustand",
    "holds the VIP": "hält die VIP",
    "does not hold the VIP": "hält die VIP nicht",
    "Replica of the peer's queue": "Replikat der Warteschlange des Partners",
    "Last sync": "Letzter Sync",
    "none yet": "noch keiner",
    "Last successful sync": "Letzter erfolgreicher Sync",
    "Replication lag": "Replikationsrückstand",
    "Config version": "Konfigurationsversion",
    "latest": "neueste",
    "VIP owner": "VIP-Inhaber",
    "both nodes: %s (a partition?)": "beide Knoten: %s (eine Netztrennung?)",
    "no node says it holds the VIP": "kein Knoten gibt an, die VIP zu halten",
    "Peer": "Partner",
    "As of %s UTC": "Stand %s UTC",
    "Cluster page": "Cluster-Seite",
    "Planned switchover": "Geplanter Wechsel",
    "A final queue sync, then the VIP moves to the peer, this node drops the mail the peer took over, and SMTP is checked on the VIP. Every step is shown with its time and audited.": "Ein letzter Queue-Sync, dann wechselt die VIP zum Partner, dieser Knoten verwirft die Mail, die der Partner übernommen hat, und SMTP wird auf der VIP geprüft. Jeder Schritt wird mit seiner Dauer angezeigt und protokolliert.",
    "Open this page through this node's own address (%s), not through the VIP: the VIP leaves this node during the switchover, and the answer would not reach you.": "Öffnen Sie diese Seite über die eigene Adresse dieses Knotens (%s), nicht über die VIP: Die VIP verlässt diesen Knoten während des Wechsels, und die Antwort würde Sie nicht erreichen.",
    "You opened this page through the VIP.": "Sie haben diese Seite über die VIP geöffnet.",
    "Switch over to the peer": "Zum Partner wechseln",
    "No other switchover runs": "Kein anderer Wechsel läuft",
    "This node holds the VIP": "Dieser Knoten hält die VIP",
    "The peer is ready": "Der Partner ist bereit",
    "Final queue sync": "Letzter Queue-Sync",
    "Hand the VIP over": "VIP übergeben",
    "The peer holds the VIP": "Der Partner hält die VIP",
    "Reconcile this node's queue": "Warteschlange dieses Knotens abgleichen",
    "SMTP on the VIP": "SMTP auf der VIP",
    "The switchover succeeded.": "Der Wechsel ist gelungen.",
    "The switchover failed.": "Der Wechsel ist fehlgeschlagen.",
    "skipped": "übersprungen",
    "Second factor": "Zweiter Faktor",
    "Second factor required for": "Zweiter Faktor vorgeschrieben für",
    "A user of such a role without a second factor must set one up at the next login.": "Ein Benutzer einer solchen Rolle ohne zweiten Faktor muss bei der nächsten Anmeldung einen einrichten.",
    "Reset second factor": "Zweiten Faktor zurücksetzen",
    "Security keys: %d": "Sicherheitsschlüssel: %d",
    "Your role requires a second factor: set one up to continue.": "Ihre Rolle verlangt einen zweiten Faktor: Richten Sie einen ein, um fortzufahren.",
    "Your role requires a second factor.": "Ihre Rolle verlangt einen zweiten Faktor.",
    "After your password, the login asks for a code from an authenticator app or for a security key.": "Nach dem Passwort fragt die Anmeldung nach einem Code aus einer Authenticator-App oder nach einem Sicherheitsschlüssel.",
    "Added": "Hinzugefügt",
    "Remove": "Entfernen",
    "Authenticator app": "Authenticator-App",
    "Security key": "Sicherheitsschlüssel",
    "No second factor yet.": "Noch kein zweiter Faktor.",
    "An app on your phone (e.g. FreeOTP, Aegis, Google Authenticator) shows a new six-digit code every 30 seconds.": "Eine App auf Ihrem Telefon (z. B. FreeOTP, Aegis, Google Authenticator) zeigt alle 30 Sekunden einen neuen sechsstelligen Code.",
    "Add an authenticator app": "Authenticator-App hinzufügen",
    "Add a security key": "Sicherheitsschlüssel hinzufügen",
    "The security key step failed:": "Der Schritt mit dem Sicherheitsschlüssel ist fehlgeschlagen:",
    "Recovery codes": "Wiederherstellungscodes",
    "Recovery code": "Wiederherstellungscode",
    "Each recovery code logs you in once when you have lost your phone or key.": "Jeder Wiederherstellungscode meldet Sie einmal an, wenn Sie Telefon oder Schlüssel verloren haben.",
    "Codes left: %d": "Verbleibende Codes: %d",
    "New recovery codes": "Neue Wiederherstellungscodes",
    "Scan this code with the app, then enter the six digits it shows.": "Scannen Sie diesen Code mit der App und geben Sie dann die sechs Ziffern ein, die sie anzeigt.",
    "Or enter this key by hand:": "Oder geben Sie diesen Schlüssel von Hand ein:",
    "Code": "Code",
    "Confirm": "Bestätigen",
    "Write these codes down or print them now: they are shown only this once. Each one logs you in once without your phone or key; earlier codes no longer work.": "Notieren oder drucken Sie diese Codes jetzt: Sie werden nur dieses eine Mal angezeigt. Jeder meldet Sie einmal ohne Telefon oder Schlüssel an; frühere Codes gelten nicht mehr.",
    "Done": "Fertig",
    "Use my security key": "Meinen Sicherheitsschlüssel verwenden",
    "Code from your authenticator app": "Code aus Ihrer Authenticator-App",
    "Lost your phone or key?": "Telefon oder Schlüssel verloren?",
    "Log in with a recovery code": "Mit einem Wiederherstellungscode anmelden",
    "No recovery code left? An Admin can reset your second factor.": "Kein Wiederherstellungscode mehr? Ein Admin kann Ihren zweiten Faktor zurücksetzen.",
    "You are logged in already.": "Sie sind bereits angemeldet.",
    "A name has at most %d characters.": "Ein Name hat höchstens %d Zeichen.",
    "Add a second factor first: recovery codes stand in for one.": "Fügen Sie zuerst einen zweiten Faktor hinzu: Wiederherstellungscodes vertreten einen solchen.",
    "Change your own factors on the Second factor page.": "Ändern Sie Ihre eigenen Faktoren auf der Seite Zweiter Faktor.",
    "Start the enrolment again: no new secret is waiting.": "Beginnen Sie die Einrichtung erneut: Es wartet kein neuer Schlüssel.",
    "The browser sent no security key answer (security keys need JavaScript).": "Der Browser hat keine Antwort eines Sicherheitsschlüssels gesendet (Sicherheitsschlüssel brauchen JavaScript).",
    "The browser sent no security key answer.": "Der Browser hat keine Antwort eines Sicherheitsschlüssels gesendet.",
    "The code does not match: check the time on your phone and try again.": "Der Code passt nicht: Prüfen Sie die Uhrzeit Ihres Telefons und versuchen Sie es erneut.",
    "The security key request expired: try again.": "Die Anfrage an den Sicherheitsschlüssel ist abgelaufen: Versuchen Sie es erneut.",
    "The security key was used twice at once: try again.": "Der Sicherheitsschlüssel wurde zweimal gleichzeitig verwendet: Versuchen Sie es erneut.",
    "There is no such factor.": "Diesen Faktor gibt es nicht.",
    "There is no user %s.": "Es gibt keinen Benutzer %s.",
    "This code was used already: wait for the next one.": "Dieser Code wurde bereits verwendet: Warten Sie auf den nächsten.",
    "This recovery code is wrong or was used already.": "Dieser Wiederherstellungscode ist falsch oder wurde bereits verwendet.",
    "This security key is not registered for your account.": "Dieser Sicherheitsschlüssel ist für Ihr Konto nicht registriert.",
    "This security key is registered already.": "Dieser Sicherheitsschlüssel ist bereits registriert.",
    "Wrong code.": "Falscher Code.",
    "You have an authenticator app already: remove it first.": "Sie haben bereits eine Authenticator-App: Entfernen Sie sie zuerst.",
    "You have no authenticator app: use a security key or a recovery code.": "Sie haben keine Authenticator-App: Verwenden Sie einen Sicherheitsschlüssel oder einen Wiederherstellungscode.",
    "You have no security key: use your authenticator app or a recovery code.": "Sie haben keinen Sicherheitsschlüssel: Verwenden Sie Ihre Authenticator-App oder einen Wiederherstellungscode.",
    "Your role requires a second factor: add another one before you remove this one.": "Ihre Rolle verlangt einen zweiten Faktor: Fügen Sie einen weiteren hinzu, bevor Sie diesen entfernen.",
    "Security keys need the GUI opened by a host name, not by an IP address.": "Sicherheitsschlüssel brauchen die Oberfläche über einen Hostnamen geöffnet, nicht über eine IP-Adresse.",
    "Security keys work only under %s (WEBAUTHN_RP_ID).": "Sicherheitsschlüssel funktionieren nur unter %s (WEBAUTHN_RP_ID).",
    "The security key's answer does not verify: %s": "Die Antwort des Sicherheitsschlüssels lässt sich nicht prüfen: %s",
    "Too many wrong codes: try again in %d minutes.": "Zu viele falsche Codes: Versuchen Sie es in %d Minuten erneut.",
    # app/config/validation.py and app/config/service.py: what a config form says back. A `{what}`
    # is the subject of its sentence, so the German noun phrases below stay in the nominative.
    "A domain": "Eine Domain",
    "The relay host": "Der Relay-Host",
    "A network": "Ein Netz",
    "The SMTP AUTH user": "Der SMTP-AUTH-Benutzer",
    "The SMTP AUTH password": "Das SMTP-AUTH-Passwort",
    "{what} must not contain spaces, line breaks or control characters.": "{what} darf keine Leerzeichen, Zeilenumbrüche oder Steuerzeichen enthalten.",
    "{what} is required.": "{what} ist erforderlich.",
    "{what} is not a valid domain name: {error}.": "{what} ist kein gültiger Domainname: {error}.",
    "{what} needs at least two labels, like example.com.": "{what} braucht mindestens zwei Labels, wie example.com.",
    "{what} has an invalid label {label!r}.": "{what} hat ein ungültiges Label {label!r}.",
    "{what} must not end in a numeric label.": "{what} darf nicht auf ein numerisches Label enden.",
    "a loopback address": "eine Loopback-Adresse",
    "an unspecified address": "eine unspezifizierte Adresse",
    "in 0.0.0.0/8 (this network)": "in 0.0.0.0/8 (dieses Netz)",
    "a link-local address": "eine Link-Local-Adresse",
    "a multicast address": "eine Multicast-Adresse",
    "a reserved or broadcast address": "eine reservierte oder Broadcast-Adresse",
    "{why} ({address}) in IPv6 form": "{why} ({address}) in IPv6-Form",
    "The relay host is required.": "Der Relay-Host ist erforderlich.",
    "The relay host must not carry an IPv6 zone (%...).": "Der Relay-Host darf keine IPv6-Zone (%...) enthalten.",
    "The relay host {address} is {why}: a route must point at a mail server elsewhere on the network.": "Der Relay-Host {address} ist {why}: Eine Route muss auf einen Mailserver an anderer Stelle im Netz zeigen.",
    "The relay host {host} names this host (localhost): a route must point at a mail server elsewhere on the network.": "Der Relay-Host {host} bezeichnet diesen Host (localhost): Eine Route muss auf einen Mailserver an anderer Stelle im Netz zeigen.",
    "The relay host must be a fully qualified name or an IP address.": "Der Relay-Host muss ein vollständiger Name oder eine IP-Adresse sein.",
    "The port must be a whole number.": "Der Port muss eine ganze Zahl sein.",
    "The port must be between 1 and 65535.": "Der Port muss zwischen 1 und 65535 liegen.",
    "The TLS mode must be one of {modes}.": "Der TLS-Modus muss einer von {modes} sein.",
    "A network is required.": "Ein Netz ist erforderlich.",
    "A network must not carry an IPv6 zone (%...).": "Ein Netz darf keine IPv6-Zone (%...) enthalten.",
    "Write the prefix length too, like {value}/32 or 10.0.0.0/8.": "Geben Sie auch die Präfixlänge an, wie {value}/32 oder 10.0.0.0/8.",
    "{value!r} is not a network in CIDR notation (like 10.0.0.0/8).": "{value!r} ist kein Netz in CIDR-Schreibweise (wie 10.0.0.0/8).",
    "{value} has host bits set; did you mean {loose}?": "{value} hat gesetzte Host-Bits; meinten Sie {loose}?",
    "{network} is too wide: trusting it would come close to an open relay (at least /{floor}).": "{network} ist zu weit: Ihm zu vertrauen käme einem offenen Relay nahe (mindestens /{floor}).",
    "IPv4-mapped addresses": "IPv4-gemappten Adressen",
    "IPv4-compatible addresses": "IPv4-kompatiblen Adressen",
    "IPv4-translated addresses": "IPv4-übersetzten Adressen",
    "NAT64 addresses": "NAT64-Adressen",
    "local-use NAT64 addresses": "lokalen NAT64-Adressen",
    "Teredo addresses": "Teredo-Adressen",
    "{network} is too wide: its {kind} ({block}) stand for an IPv4 /{ipv4_width}; trusting it would come close to an open relay (at least /{floor} there, an IPv4 /{ipv4_floor}).": "{network} ist zu weit: Seine {kind} ({block}) stehen für ein IPv4-/{ipv4_width}; ihm zu vertrauen käme einem offenen Relay nahe (dort mindestens /{floor}, ein IPv4-/{ipv4_floor}).",
    "The SMTP AUTH user has at most 255 characters.": "Der SMTP-AUTH-Benutzer hat höchstens 255 Zeichen.",
    "The SMTP AUTH user must not contain ':'.": "Der SMTP-AUTH-Benutzer darf kein ':' enthalten.",
    "The SMTP AUTH password has at most 255 characters.": "Das SMTP-AUTH-Passwort hat höchstens 255 Zeichen.",
    "A comment has at most {n} characters.": "Ein Kommentar hat höchstens {n} Zeichen.",
    "A comment must not contain control characters.": "Ein Kommentar darf keine Steuerzeichen enthalten.",
    "There is no sender domain {name}.": "Es gibt keine Absenderdomain {name}.",
    "The sender domain {name} exists already.": "Die Absenderdomain {name} gibt es bereits.",
    "The sender domain {name} has no route.": "Die Absenderdomain {name} hat keine Route.",
    "The host, port or TLS mode changed, and the stored password is only for the relay it was saved for: type the SMTP AUTH password again.": "Host, Port oder TLS-Modus haben sich geändert, und das gespeicherte Passwort gilt nur für das Relay, für das es gespeichert wurde: Geben Sie das SMTP-AUTH-Passwort erneut ein.",
    "[{host}]:{port} already has TLS mode {mode} on the route for {domain}; routes to one host and port must use the same TLS mode.": "[{host}]:{port} hat bereits TLS-Modus {mode} in der Route für {domain}; Routen zu einem Host und Port müssen denselben TLS-Modus verwenden.",
    "The network {network} is trusted already.": "Das Netz {network} ist bereits vertrauenswürdig.",
    "The network {network} is not trusted.": "Das Netz {network} ist nicht vertrauenswürdig.",
    "There is no config version {number}.": "Es gibt keine Konfigurationsversion {number}.",
    "There is no config version yet: add a sender domain first.": "Es gibt noch keine Konfigurationsversion: Fügen Sie zuerst eine Absenderdomain hinzu.",
    # app/postfix/routecheck.py ("Which route?"). `{what}` is the sender or recipient address.
    "sender": "Absenderadresse",
    "recipient": "Empfängeradresse",
    "The {what} must not contain control characters or line breaks.": "Die {what} darf keine Steuerzeichen oder Zeilenumbrüche enthalten.",
    "The {what} must not contain spaces.": "Die {what} darf keine Leerzeichen enthalten.",
    "The {what} has at most {n} characters.": "Die {what} hat höchstens {n} Zeichen.",
    "The {what} must be an address like user@example.com.": "Die {what} muss eine Adresse wie user@example.com sein.",
    "The local part of the {what} has at most {n} characters.": "Der lokale Teil der {what} hat höchstens {n} Zeichen.",
    "The local part of the {what} must not start or end with a dot or hold two dots in a row.": "Der lokale Teil der {what} darf nicht mit einem Punkt beginnen oder enden und keine zwei Punkte hintereinander enthalten.",
    "The local part of the {what} holds characters an address cannot have unquoted (like @, comma, quotes or brackets).": "Der lokale Teil der {what} enthält Zeichen, die eine Adresse ohne Anführungszeichen nicht haben kann (wie @, Komma, Anführungszeichen oder Klammern).",
    "The {what} must have a domain name, not an address literal.": "Die {what} muss einen Domainnamen haben, kein Adressliteral.",
    "The domain of the {what}": "Die Domain der {what}",
    "The null sender <> is used only for bounces (delivery status notifications); Postfix looks it up as <> in the access and relay host maps.": "Der leere Absender <> wird nur für Unzustellbarkeitsnachrichten (Delivery Status Notifications) verwendet; Postfix schlägt ihn als <> in den Access- und Relay-Host-Maps nach.",
    "sender_access answers {value!r} for {key}.": "sender_access antwortet {value!r} für {key}.",
    "{domain} is not listed itself: the entry {key} for a parent domain admits it (parent_domain_matches_subdomains lists smtpd_access_maps).": "{domain} ist nicht selbst eingetragen: Der Eintrag {key} für eine übergeordnete Domain lässt sie zu (parent_domain_matches_subdomains nennt smtpd_access_maps).",
    "{listed} is listed, but on this relay an entry admits only its own domain, not subdomains: add {domain} as a sender domain of its own.": "{listed} ist eingetragen, aber auf diesem Relay lässt ein Eintrag nur seine eigene Domain zu, keine Subdomains: Fügen Sie {domain} als eigene Absenderdomain hinzu.",
    "The relay host map has no parent-domain matching: mail from this sender goes directly to the recipient's MX, not through the parent domain's route.": "Die Relay-Host-Map kennt keine Übereinstimmung über die übergeordnete Domain: Mail dieses Absenders geht direkt an den MX des Empfängers, nicht über die Route der übergeordneten Domain.",
    # app/postfix/routetest.py: the steps' details and errors, and the notes under the table.
    "connect": "Verbinden",
    "banner": "Begrüßung",
    "certificate": "Zertifikat",
    "verify certificate": "Zertifikat prüfen",
    "(empty)": "(leer)",
    "connected": "verbunden",
    "connected to {address} port {port}": "verbunden mit {address} Port {port}",
    "the server closed the connection": "der Server hat die Verbindung geschlossen",
    "not an SMTP reply: {line!r}": "keine SMTP-Antwort: {line!r}",
    "the reply is longer than {n} lines": "die Antwort ist länger als {n} Zeilen",
    "certificate verification failed: {reason}": "Zertifikatsprüfung fehlgeschlagen: {reason}",
    "timed out": "Zeitüberschreitung",
    "cannot resolve the host: {reason}": "der Host lässt sich nicht auflösen: {reason}",
    "subject {subject}; issuer {issuer}; SANs {sans}; valid until {until:%Y-%m-%d %H:%M} UTC": "Inhaber {subject}; Aussteller {issuer}; SANs {sans}; gültig bis {until:%d.%m.%Y %H:%M} UTC",
    "The server offers STARTTLS, but TLS mode none does not use it.": "Der Server bietet STARTTLS an, aber TLS-Modus none verwendet es nicht.",
    "the server does not offer STARTTLS, which TLS mode {mode} requires: Postfix would defer the mail": "der Server bietet kein STARTTLS an, das TLS-Modus {mode} verlangt: Postfix würde die Mail zurückstellen",
    "not offered: mail goes out unencrypted": "nicht angeboten: Mail geht unverschlüsselt hinaus",
    "The server does not offer STARTTLS: in TLS mode may, Postfix sends in clear.": "Der Server bietet kein STARTTLS an: Im TLS-Modus may sendet Postfix unverschlüsselt.",
    "cannot read the certificate: {error}": "das Zertifikat lässt sich nicht lesen: {error}",
    "the server sent no certificate": "der Server hat kein Zertifikat gesendet",
    "the certificate has expired": "das Zertifikat ist abgelaufen",
    "could not check: {error}": "konnte nicht prüfen: {error}",
    "verifies against the system CA store": "gültig gegenüber dem System-CA-Speicher",
    "{error} (accepted in TLS mode {mode}; verify would fail)": "{error} (im TLS-Modus {mode} akzeptiert; verify würde scheitern)",
    "The certificate does not verify ({error}): acceptable for TLS mode {mode}, but TLS mode verify would fail.": "Das Zertifikat lässt sich nicht prüfen ({error}): Für TLS-Modus {mode} annehmbar, aber TLS-Modus verify würde scheitern.",
    "not sent: the session is not encrypted; this test never sends a password in clear": "nicht gesendet: Die Sitzung ist nicht verschlüsselt; dieser Test sendet nie ein Passwort im Klartext",
    "not sent: the session is not encrypted; this test never sends a password in clear (with TLS mode none, Postfix itself would send it in clear)": "nicht gesendet: Die Sitzung ist nicht verschlüsselt; dieser Test sendet nie ein Passwort im Klartext (mit TLS-Modus none würde Postfix selbst es im Klartext senden)",
    "the server offers AUTH {mechanisms}, not PLAIN or LOGIN": "der Server bietet AUTH {mechanisms} an, nicht PLAIN oder LOGIN",
    "the server does not offer AUTH": "der Server bietet kein AUTH an",
    "{mechanism} as {user}": "{mechanism} als {user}",
    "{mechanism} as {user}: {reply}": "{mechanism} als {user}: {reply}",
    # app/cluster/switchover.py: each step's detail. `{peer}` is "the peer" or "node b".
    "the peer": "der Partner",
    "node {node}": "Knoten {node}",
    "no state": "keinen Zustand",
    "VIP_ADDRESS is not set on this node": "VIP_ADDRESS ist auf diesem Knoten nicht gesetzt",
    "cannot tell whether this node holds the VIP: {error}": "kann nicht feststellen, ob dieser Knoten die VIP hält: {error}",
    "this node ({node}) does not hold the VIP {vip}: run it on the active node": "dieser Knoten ({node}) hält die VIP {vip} nicht: Führen Sie den Wechsel auf dem aktiven Knoten aus",
    "node {node} holds the VIP {vip}": "Knoten {node} hält die VIP {vip}",
    "the peer cannot be asked: {error}": "der Partner kann nicht gefragt werden: {error}",
    "{peer}'s keepalived last reported {state}, not BACKUP: it could not take the VIP": "keepalived von {peer} meldete zuletzt {state}, nicht BACKUP: Er könnte die VIP nicht übernehmen",
    "{peer} holds the VIP too (a partition?)": "{peer} hält die VIP ebenfalls (eine Netztrennung?)",
    "{peer} answers and is BACKUP": "{peer} antwortet und ist BACKUP",
    "the final queue sync: {outcome}: {detail}; the VIP stays here": "der letzte Queue-Sync: {outcome}: {detail}; die VIP bleibt hier",
    "{files} files, {bytes} bytes copied to {peer}'s replica; Postfix frozen {ms:.0f} ms ({freeze})": "{files} Dateien, {bytes} Bytes in das Replikat von {peer} kopiert; Postfix {ms:.0f} ms eingefroren ({freeze})",
    "keepalived stopped, the VIP left this node after {seconds:.2f} s, keepalived started again (BACKUP)": "keepalived gestoppt, die VIP hat diesen Knoten nach {seconds:.2f} s verlassen, keepalived wieder gestartet (BACKUP)",
    "{peer} holds the VIP {vip} and is MASTER": "{peer} hält die VIP {vip} und ist MASTER",
    "VIP held: {held}, VRRP state: {state}, its agent answered: {answered}": "VIP gehalten: {held}, VRRP-Zustand: {state}, sein Agent hat geantwortet: {answered}",
    "unknown ({error})": "unbekannt ({error})",
    "{peer} has not taken over after {seconds:g} s ({seen}); the VIP is on this node: {here}. This node's queue was not reconciled: check the dashboard, then run `mailrelay reconcile` here once the peer is active": "{peer} hat nach {seconds:g} s nicht übernommen ({seen}); die VIP ist auf diesem Knoten: {here}. Die Warteschlange dieses Knotens wurde nicht abgeglichen: Prüfen Sie die Übersicht und führen Sie dann hier `mailrelay reconcile` aus, sobald der Partner aktiv ist",
    "{held} messages stay on hold here: {detail}; the dashboard offers to release them": "{held} Nachrichten bleiben hier angehalten: {detail}; die Übersicht bietet an, sie freizugeben",
    "the queue here was empty": "die Warteschlange hier war leer",
    "{held} messages held; {deleted} taken over by {peer} and deleted here, {released} released to be delivered from here": "{held} Nachrichten angehalten; {deleted} von {peer} übernommen und hier gelöscht, {released} zur Zustellung von hier freigegeben",
    "{host}:{port} greeted with {code} {greeting!r}": "{host}:{port} grüßte mit {code} {greeting!r}",
    "{host}:{port} answered EHLO with {code}": "{host}:{port} antwortete auf EHLO mit {code}",
    "SMTP on {host}:{port}: {error}": "SMTP auf {host}:{port}: {error}",
    "{host}:{port} greets ({greeting}) and accepts EHLO": "{host}:{port} grüßt ({greeting}) und nimmt EHLO an",
    "another switchover is running: {error}": "ein anderer Wechsel läuft: {error}",
    "not run: an earlier step failed": "nicht ausgeführt: ein früherer Schritt ist fehlgeschlagen",
    # app/auth: users, passwords, roles and API tokens.
    "The current password is wrong.": "Das aktuelle Passwort ist falsch.",
    "A username has 2-64 characters: lowercase letters, digits, '.', '_' or '-'.": "Ein Benutzername hat 2 bis 64 Zeichen: Kleinbuchstaben, Ziffern, '.', '_' oder '-'.",
    "The user {name} exists already.": "Den Benutzer {name} gibt es bereits.",
    "There is no user {name}.": "Es gibt keinen Benutzer {name}.",
    "The last Admin cannot lose the Admin role.": "Der letzte Admin kann die Admin-Rolle nicht verlieren.",
    "You cannot delete your own account.": "Sie können Ihr eigenes Konto nicht löschen.",
    "The last Admin cannot be deleted.": "Der letzte Admin kann nicht gelöscht werden.",
    "The password must have at least {n} characters.": "Das Passwort muss mindestens {n} Zeichen haben.",
    "The password must not be the username.": "Das Passwort darf nicht der Benutzername sein.",
    "The password must not contain control characters.": "Das Passwort darf keine Steuerzeichen enthalten.",
    "The new password must differ from the old one.": "Das neue Passwort muss sich vom alten unterscheiden.",
    "unknown role {role!r} (admin, operator, readonly)": "unbekannte Rolle {role!r} (admin, operator, readonly)",
    "A token name has 1-64 letters, digits, '-', '_' or '.'.": "Ein Token-Name hat 1 bis 64 Buchstaben, Ziffern, '-', '_' oder '.'.",
    "The token kind must be one of {kinds}.": "Die Token-Art muss eine von {kinds} sein.",
    "A token named {name} exists already.": "Ein Token namens {name} gibt es bereits.",
    "There is no active token named {name}.": "Es gibt kein aktives Token namens {name}.",
    # app/alerts: the titles and what each condition says (templates/dashboard/_alerts.html).
    "Active alerts": "Aktive Alarme",
    "Queue sync failing": "Warteschlangen-Synchronisation schlägt fehl",
    "Queue size": "Warteschlangengröße",
    "Old mail in the queue": "Alte Mail in der Warteschlange",
    "Peer unreachable": "Partner nicht erreichbar",
    "Mail without a shadow copy": "Mail ohne Schattenkopie",
    "Both nodes MASTER": "Beide Knoten MASTER",
    "Mail held for release": "Mail zur Freigabe angehalten",
    "Certificate expiring": "Zertifikat läuft ab",
    "Spool disk nearly full": "Spool-Datenträger fast voll",
    "Config versions differ": "Konfigurationsversionen unterscheiden sich",
    "this node does not hold the VIP": "dieser Knoten hält die VIP nicht",
    "the last %s queue-sync runs failed; the last one: %s": "die letzten %s Synchronisationsläufe sind fehlgeschlagen; der letzte: %s",
    "queue sync works": "die Synchronisation funktioniert",
    "the last successful queue sync ended %s minutes ago (limit %s)": "die letzte erfolgreiche Synchronisation endete vor %s Minuten (Grenze %s)",
    "the replica is current": "die Replik ist aktuell",
    "%s messages in the queue (limit %s)": "%s Nachrichten in der Warteschlange (Grenze %s)",
    "the queue is empty": "die Warteschlange ist leer",
    "the oldest message has been queued for %s minutes (limit %s)": "die älteste Nachricht wartet seit %s Minuten (Grenze %s)",
    "the peer answers": "der Partner antwortet",
    "the peer's status API: %s": "die Status-API des Partners: %s",
    "the shadow milter does not answer: Postfix accepts mail without a copy on the peer": "der Schatten-Milter antwortet nicht: Postfix nimmt Mail ohne Kopie auf dem Partner an",
    "%s messages were accepted without a shadow copy on the peer since the last check": "%s Nachrichten wurden seit der letzten Prüfung ohne Schattenkopie auf dem Partner angenommen",
    "every message since the last check has a copy": "jede Nachricht seit der letzten Prüfung hat eine Kopie",
    "both nodes are MASTER (VIP held by: %s): a partition between them?": "beide Knoten sind MASTER (VIP gehalten von: %s): eine Netztrennung zwischen ihnen?",
    "one MASTER": "ein MASTER",
    "%s messages are held: this node came back and could not ask its peer which it delivered; release them on the dashboard": "%s Nachrichten sind angehalten: Dieser Knoten kam zurück und konnte seinen Partner nicht fragen, welche er zugestellt hat; geben Sie sie in der Übersicht frei",
    "the node's HTTPS certificate expires on %s (in %s days)": "das HTTPS-Zertifikat des Knotens läuft am %s ab (in %s Tagen)",
    "the spool's file system is %s%% full (limit %s%%)": "das Dateisystem des Spools ist zu %s%% voll (Grenze %s%%)",
    "the nodes have run different config versions for %s minutes": "die Knoten verwenden seit %s Minuten unterschiedliche Konfigurationsversionen",
    "the nodes run the same config version": "die Knoten verwenden dieselbe Konfigurationsversion",
    # API tokens: kinds, allowed source networks, expiry, last use
    "read: GET only; write: also changes the configuration and the queue; cluster: the peer node": "read: nur lesen (GET); write: ändert auch Konfiguration und Warteschlange; cluster: der Partnerknoten",
    "Allowed source networks": "Erlaubte Quellnetze",
    "CIDRs separated by spaces; empty: from anywhere": "CIDRs durch Leerzeichen getrennt; leer: von überall",
    "Valid for (days)": "Gültig für (Tage)",
    "empty: never expires": "leer: läuft nie ab",
    "Allowed from": "Erlaubt von",
    "Expires": "Läuft ab",
    "anywhere": "überall",
    "never": "nie",
    "from": "von",
    "{entry} is not a network or address (like 198.51.100.0/24 or 2001:db8::1).": "{entry} ist kein Netz und keine Adresse (wie 198.51.100.0/24 oder 2001:db8::1).",
    "{entry} has host bits set; did you mean {network}?": "In {entry} sind Host-Bits gesetzt; meinten Sie {network}?",
    "A token allows at most {count} source networks.": "Ein Token erlaubt höchstens {count} Quellnetze.",
    "The lifetime is a whole number of days from 1 to {most}.": "Die Gültigkeit ist eine ganze Zahl von Tagen von 1 bis {most}.",
    "There is no queue action {action}: one of {actions}.": "Es gibt keine Warteschlangen-Aktion {action}: eine von {actions}.",
}


def translator(language: str) -> Callable[..., str]:
    """`_` for one language: a text key with `%` arguments (templates), or a Message from a
    service, whose `{name}` placeholders are filled after the lookup."""
    table = GERMAN if language == "de" else {}

    def translate(text: str, *args: object) -> str:
        if isinstance(text, Message):
            params = {k: _localised(v, language, translate) for k, v in text.params.items()}
            return table.get(text.key, text.key).format(**params)
        result = table.get(text, text)
        return result % args if args else result

    return translate


def _localised(value: object, language: str, translate: Callable[..., str]) -> object:
    if isinstance(value, Message):
        return translate(value)
    if language == "de" and isinstance(value, float):
        return _GermanFloat(value)
    return value


class _GermanFloat(float):
    """A float in a German message: "{seconds:.2f} s" writes 1,25 s. Integers are left alone,
    as they are ports and version numbers as often as counts."""

    def __format__(self, spec: str) -> str:
        return format(float(self), spec).translate(_SWAP_SEPARATORS)


def plural_translator(language: str) -> Callable[..., str]:
    """`ngettext` for templates: ngettext("{n} message", "{n} messages", count, **params)."""
    translate = translator(language)

    def ngettext(singular: str, plural_: str, n: int, **params: object) -> str:
        return translate(plural(singular, plural_, n, **params))

    return ngettext


# Dates and numbers: German as Germans write them; English keeps the ISO-like form it had.
_DATE_FORMATS = {"de": "%d.%m.%Y", "en": "%Y-%m-%d"}
_SWAP_SEPARATORS = str.maketrans(",.", ".,")


def format_datetime(value: dt.datetime | str | None, language: str, seconds: bool = False) -> str:
    """A datetime, or an ISO 8601 text as the status API sends it; the time zone is not shown."""
    if not value:
        return ""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    time = "%H:%M:%S" if seconds else "%H:%M"
    return value.strftime(f"{_DATE_FORMATS.get(language, _DATE_FORMATS['en'])} {time}")


def format_number(value: float | None, language: str, digits: int = 0) -> str:
    if value is None:
        return ""
    if language != "de":
        return f"{value:.{digits}f}"
    text = f"{value:,.{digits}f}"
    return text.translate(_SWAP_SEPARATORS)


@pass_context
def datetime_filter(
    context: Context, value: dt.datetime | str | None, seconds: bool = False
) -> str:
    return format_datetime(value, context.get("lang", "en"), seconds)


@pass_context
def number_filter(context: Context, value: float | None, digits: int = 0) -> str:
    return format_number(value, context.get("lang", "en"), digits)


FILTERS = {"datetime": datetime_filter, "number": number_filter}


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
