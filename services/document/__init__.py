"""Documents: content, revisions, attachments and PDF export."""
