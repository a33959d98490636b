"""manage.py services start|stop|status: the embedded PostgreSQL+pgvector and Redis."""

from django.core.management.base import BaseCommand, CommandError

from mmsearch import services


class Command(BaseCommand):
    requires_system_checks: list = []
    help = "Start, stop or show the embedded PostgreSQL (pgvector) and Redis used when DATABASE_URL/REDIS_URL are unset."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["start", "stop", "status"])

    def handle(self, *args, action: str, **options):
        want_pg, want_redis = services.embedded_wanted()
        if not (want_pg or want_redis):
            self.stdout.write("DATABASE_URL and REDIS_URL are set: no embedded services are used.")
            return
        try:
            if action == "start":
                result = services.ensure_started()
            elif action == "stop":
                result = ([services.stop_postgres()] if want_pg else []) + ([services.stop_redis()] if want_redis else [])
            else:
                result = ([services.postgres_status()] if want_pg else []) + ([services.redis_status()] if want_redis else [])
        except services.ServiceError as exc:
            raise CommandError(str(exc)) from exc
        for status in result:
            self.stdout.write(str(status))
