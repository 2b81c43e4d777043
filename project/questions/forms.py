from django import forms

from project.questions.models import Question


class QuestionForm(forms.ModelForm):
    class Meta:
        model = Question
        fields = ["title", "body"]
        widgets = {"body": forms.Textarea(attrs={"rows": 4})}
