"""How many characters the local model's tokenizer makes a word piece of, per script.

Passage sizes are English-equivalent characters (``semantic.text.weighted_length``): a
CJK character, kana, hangul syllable or emoji weighs 4, another non-Latin letter 2. This
measures, with the tokenizer all-MiniLM-L6-v2 ships (``tokenizer.json`` beside the
weights, read by ``tokenizers``; no network), how many characters and how many
English-equivalent characters make one word piece in a few scripts. A passage of 900
English-equivalent characters fits the model's 254 word pieces when the second figure
is at least 900 / 254 = 3.5. Gemini's tokenizer is not available offline: its figures
are not measured here.

The samples are a few sentences written for this measurement (the same meaning in
each language, about a glacier); English is also measured on README.md.

    .venv/bin/python -m benchmarks.script_tokens
"""

from __future__ import annotations

from benchmarks.common import BASE_DIR
from semantic.backends.local import LocalBackend
from semantic.text import weighted_length

SAMPLES = {
    "English": (
        "The glacier has retreated every summer for forty years. Scientists measure its edge each August "
        "and find it two hundred metres further up the valley. The meltwater feeds the river that the town "
        "below drinks from, so the council has started to plan for drier years."
    ),
    "French": (
        "Le glacier recule chaque été depuis quarante ans. Les scientifiques mesurent son front chaque août "
        "et le trouvent deux cents mètres plus haut dans la vallée. L’eau de fonte alimente la rivière où "
        "boit la ville d’en bas ; le conseil a donc commencé à préparer des années plus sèches."
    ),
    "German": (
        "Der Gletscher zieht sich seit vierzig Jahren jeden Sommer zurück. Wissenschaftler messen seinen Rand "
        "jeden August und finden ihn zweihundert Meter weiter oben im Tal. Das Schmelzwasser speist den Fluss, "
        "aus dem die Stadt darunter trinkt, deshalb plant der Gemeinderat für trockenere Jahre."
    ),
    "Russian": (
        "Ледник отступает каждое лето уже сорок лет. Учёные измеряют его край каждый август и находят его на "
        "двести метров выше по долине. Талая вода питает реку, из которой пьёт город внизу, поэтому совет "
        "начал готовиться к более засушливым годам."
    ),
    "Greek": (
        "Ο παγετώνας υποχωρεί κάθε καλοκαίρι εδώ και σαράντα χρόνια. Οι επιστήμονες μετρούν την άκρη του κάθε "
        "Αύγουστο και τη βρίσκουν διακόσια μέτρα ψηλότερα στην κοιλάδα. Το νερό από το λιώσιμο τροφοδοτεί το "
        "ποτάμι από το οποίο πίνει η πόλη, γι’ αυτό το συμβούλιο σχεδιάζει για πιο ξηρά χρόνια."
    ),
    "Arabic": (
        "يتراجع النهر الجليدي كل صيف منذ أربعين عاما. يقيس العلماء حافته كل شهر أغسطس ويجدونها أعلى بمئتي متر "
        "في الوادي. تغذي مياه الذوبان النهر الذي تشرب منه المدينة في الأسفل، لذلك بدأ المجلس يستعد لسنوات "
        "أكثر جفافا."
    ),
    "Hindi": (
        "हिमनद चालीस वर्षों से हर गर्मी में पीछे हट रहा है। वैज्ञानिक हर अगस्त में इसके किनारे को मापते हैं और उसे "
        "घाटी में दो सौ मीटर ऊपर पाते हैं। पिघला हुआ पानी उस नदी को भरता है जिससे नीचे का शहर पानी पीता है, "
        "इसलिए परिषद ने सूखे वर्षों की योजना बनानी शुरू कर दी है।"
    ),
    "Chinese": (
        "四十年来，这条冰川每年夏天都在后退。科学家每年八月测量它的边缘，发现它在山谷里又向上退了两百米。"
        "融水流入山下小镇饮用的河流，所以镇议会已经开始为更干旱的年份做准备。"
    ),
    "Japanese": (
        "この氷河は四十年間、毎年夏に後退している。科学者は毎年八月にその末端を測り、谷の二百メートル上に"
        "見つける。融けた水は下の町が飲む川に注ぐので、議会はより乾いた年に備え始めた。"
    ),
    "Korean": (
        "이 빙하는 사십 년 동안 매년 여름 후퇴해 왔다. 과학자들은 매년 8월 그 끝을 측정하고, 계곡에서 "
        "이백 미터 더 위에서 찾는다. 녹은 물은 아래 마을이 마시는 강으로 흘러가므로 의회는 더 건조한 해를 "
        "준비하기 시작했다."
    ),
}


def main() -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(LocalBackend().model_path() / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    samples = {**SAMPLES, "English (README.md)": (BASE_DIR / "README.md").read_text()}
    header = f"{'script':22} {'chars':>7} {'pieces':>7} {'chars/piece':>12} {'weighted/piece':>15} {'[UNK]':>6}"
    print(f"{header} {'pieces in 900':>14}")
    for name, text in samples.items():
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        unknown = ids.count(tokenizer.token_to_id("[UNK]"))
        print(
            f"{name:22} {len(text):7} {len(ids):7} {len(text) / len(ids):12.2f} "
            f"{weighted_length(text) / len(ids):15.2f} {unknown:6} {900 * len(ids) / weighted_length(text):14.0f}"
        )


if __name__ == "__main__":
    main()
