"""Notifications: targets (SMTP, webhooks), rules, the notifier loop and its daily report."""
