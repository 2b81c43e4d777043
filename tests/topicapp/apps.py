from django.apps import AppConfig


class TopicappConfig(AppConfig):
    name = "tests.topicapp"
    label = "topicapp"
    default_auto_field = "django.db.models.BigAutoField"
