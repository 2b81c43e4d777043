from django.urls import path

from project.questions import views

app_name = "questions"
urlpatterns = [
    path("", views.question_list, name="list"),
    path("ask/", views.ask, name="ask"),
    path("<int:pk>/", views.question_detail, name="detail"),
    path("<int:pk>/state.json", views.question_state, name="state"),
]
