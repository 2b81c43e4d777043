from django import forms

from project.questions.models import Question


class QuestionForm(forms.ModelForm):
    """A new question. The category is asked for on the second step, once a suggestion is made."""

    class Meta:
        model = Question
        fields = ["title", "body", "category"]
        widgets = {"body": forms.Textarea(attrs={"rows": 4})}
        labels = {"category": "Category"}

    def chose_category(self) -> bool:
        """Whether the user has seen the category field (and so accepted or changed its suggestion)."""
        return self.is_bound and "category" in self.data

    def with_category(self, category: str) -> "QuestionForm":
        """The same form, its category set to ``category``: a suggestion the user can still change."""
        data = self.data.copy()
        data["category"] = category
        return type(self)(data)
