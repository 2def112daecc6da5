"""Send COUNT messages over one SMTP session: `python sender.py SERVER COUNT TAG`.
Each has the Message-ID <TAG-i@drill.test>, so the sink can count unique deliveries."""

import smtplib
import sys

server, count, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
smtp = smtplib.SMTP(server, 25, timeout=30)
for i in range(count):
    message = (
        "From: app@app.example\r\nTo: you@dest.example\r\n"
        f"Message-ID: <{tag}-{i}@drill.test>\r\nSubject: drill {i}\r\n\r\nbody {i}\r\n"
    )
    smtp.sendmail("app@app.example", ["you@dest.example"], message)
smtp.quit()
