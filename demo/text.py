"""Seeded bilingual sentence generator for the demo speech (the project's own word lists).

`sentences(lang, n, seed)` gives n sentences of 4-15 words in English ("en") or French ("fr"),
built from small grammars (statements, negations, questions, coordinated clauses, numbers spelled
out) over a few hundred words per language. Text is normalised for a character model: lowercase
letters from ALPHABET (French accents included), apostrophes and single spaces; no punctuation and
no digits. The same (lang, n, seed) always gives the same list.
"""

from __future__ import annotations

import random
import re

ALPHABET = " 'abcdefghijklmnopqrstuvwxyzàâçéèêëîïôùûüÿœ"
LANGS = ("en", "fr")
MIN_WORDS, MAX_WORDS = 4, 15
VOWELS = "aeiouyàâéèêëîïôùûüœh"


def normalize(text: str) -> str:
    """Lowercase, hyphens to spaces, drop anything outside ALPHABET, single spaces."""
    text = text.lower().replace("-", " ").replace("’", "'")
    text = "".join(ch for ch in text if ch in ALPHABET)
    return re.sub(r" +", " ", text).strip()


def sentences(lang: str, n: int, seed: int) -> list[str]:
    """n normalised sentences of MIN_WORDS..MAX_WORDS words, reproducible from (lang, seed)."""
    if lang not in LANGS:
        raise ValueError(f"unknown language {lang!r}; use one of {LANGS}")
    rng = random.Random(f"{lang}:{seed}")
    make = _english if lang == "en" else _french
    out: list[str] = []
    while len(out) < n:
        sentence = normalize(make(rng))
        if MIN_WORDS <= len(sentence.split()) <= MAX_WORDS:
            out.append(sentence)
    return out


def _words(block: str) -> list[str]:
    return block.split()


# ----------------------------------------------------------------------------------------- English
EN_NOUNS = _words("""
    house garden river mountain city village street road bridge window door table chair kitchen
    school teacher student doctor farmer driver painter singer writer baker sailor soldier artist
    friend neighbour brother sister mother father uncle aunt cousin baby girl boy family king queen
    dog cat horse bird rabbit fox wolf bear lion tiger fish cow sheep goat duck frog snake mouse
    apple bread cheese coffee soup cake orange lemon tomato potato carrot onion egg butter sugar
    book letter paper pencil picture camera phone computer radio clock lamp mirror bottle glass cup
    plate basket box bag ticket key coat hat shoe shirt dress umbrella ring watch
    car train plane boat bicycle bus truck ship rocket engine wheel
    morning evening night winter summer spring autumn holiday birthday week month year minute hour
    forest field lake island beach ocean desert valley hill sky cloud storm rain snow wind sun moon star
    market shop bank hospital library museum church station airport office factory hotel theatre
    song story game question answer idea dream problem plan message lesson secret promise
    music history science language country nation government president minister speech journey
""")
EN_PLURAL = {"child": "children", "man": "men", "woman": "women", "mouse": "mice", "sheep": "sheep",
             "fish": "fish", "person": "people", "foot": "feet", "tooth": "teeth", "wolf": "wolves",
             "knife": "knives", "leaf": "leaves", "potato": "potatoes", "tomato": "tomatoes",
             "hero": "heroes", "life": "lives", "city": "cities", "baby": "babies", "country": "countries"}
EN_NOUNS += ["child", "man", "woman", "person", "knife", "leaf", "hero"]
EN_ADJECTIVES = _words("""
    big small old young new long short tall happy sad angry quiet loud bright dark warm cold hot
    cheap expensive clean dirty empty full heavy light fast slow strong weak rich poor busy lazy
    brave clever kind funny strange famous beautiful ugly green red blue yellow white black brown
    golden wooden modern ancient simple difficult easy important dangerous safe gentle proud
    tired hungry friendly careful curious wonderful terrible lovely lonely narrow wide deep
""")
EN_ADVERBS = _words("""
    quickly slowly quietly loudly carefully happily sadly often always never sometimes rarely
    today yesterday tomorrow again already soon suddenly finally early late together alone
    gently badly easily proudly politely really
""")
# (base, past); the third person singular is derived.
EN_TRANSITIVE = [tuple(p.split("/")) for p in _words("""
    see/saw find/found take/took make/made bring/brought buy/bought sell/sold build/built
    write/wrote read/read open/opened close/closed carry/carried watch/watched visit/visited
    paint/painted clean/cleaned cook/cooked eat/ate drink/drank want/wanted need/needed like/liked
    love/loved hate/hated help/helped call/called follow/followed remember/remembered forget/forgot
    hear/heard know/knew meet/met give/gave send/sent show/showed teach/taught catch/caught
    throw/threw break/broke fix/fixed wash/washed push/pushed pull/pulled move/moved hide/hid
    keep/kept lose/lost win/won answer/answered ask/asked draw/drew choose/chose count/counted
    describe/described explain/explained discover/discovered prepare/prepared order/ordered
""")]
EN_INTRANSITIVE = [tuple(p.split("/")) for p in _words("""
    sleep/slept walk/walked run/ran swim/swam sing/sang dance/danced laugh/laughed cry/cried
    wait/waited work/worked travel/travelled arrive/arrived leave/left smile/smiled listen/listened
    fall/fell stay/stayed rest/rested speak/spoke shout/shouted jump/jumped play/played win/won
""")]
EN_PREPOSITIONS = _words("in on under near behind beside across through into from with without after before")
EN_NAMES = _words("anna peter maria john sarah david emma lucas oliver sophie thomas grace henry alice "
                  "james laura daniel ella robert julia")
EN_SUBJECT_PRONOUNS = {"i": "base", "you": "base", "we": "base", "they": "base",
                       "he": "third", "she": "third", "it": "third"}
EN_ONES = _words("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                 "fourteen fifteen sixteen seventeen eighteen nineteen")
EN_TENS = _words("_ _ twenty thirty forty fifty sixty seventy eighty ninety")


def en_number(n: int) -> str:
    if n < 20:
        return EN_ONES[n]
    if n < 100:
        return EN_TENS[n // 10] + ("" if n % 10 == 0 else " " + EN_ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return EN_ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + en_number(rest))
    rest = n % 1000
    return en_number(n // 1000) + " thousand" + ("" if rest == 0 else " " + en_number(rest))


def _en_plural(noun: str) -> str:
    if noun in EN_PLURAL:
        return EN_PLURAL[noun]
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _en_third(base: str) -> str:
    special = {"have": "has", "do": "does", "go": "goes"}
    if base in special:
        return special[base]
    return _en_plural(base) if base not in EN_PLURAL else base + "s"


def _en_noun_phrase(rng: random.Random, plural: bool | None = None) -> tuple[str, bool]:
    """A noun phrase and whether it is plural."""
    if plural is None:
        plural = rng.random() < 0.35
    noun = rng.choice(EN_NOUNS)
    adjectives = rng.sample(EN_ADJECTIVES, k=rng.choice((0, 0, 1, 1, 2)))
    if rng.random() < 0.15 and adjectives:
        adjectives[0] = rng.choice(("very", "rather", "quite")) + " " + adjectives[0]
    core = " ".join([*adjectives, _en_plural(noun) if plural else noun])
    if plural:
        det = rng.choice(("the", "these", "those", "some", "many", "my", "our", "their", "your", "number"))
        if det == "number":
            det = en_number(rng.choice((rng.randint(2, 20), rng.randint(2, 999))))
    else:
        det = rng.choice(("the", "the", "a", "this", "that", "every", "my", "his", "her", "our"))
        if det == "a" and core[0] in "aeiou":
            det = "an"
    return f"{det} {core}", plural


def _en_subject(rng: random.Random) -> tuple[str, str]:
    """A subject and its verb agreement: 'base' or 'third'."""
    roll = rng.random()
    if roll < 0.3:
        pronoun = rng.choice(list(EN_SUBJECT_PRONOUNS))
        return pronoun, EN_SUBJECT_PRONOUNS[pronoun]
    if roll < 0.45:
        return rng.choice(EN_NAMES), "third"
    phrase, plural = _en_noun_phrase(rng)
    return phrase, "base" if plural else "third"


def _en_clause(rng: random.Random) -> str:
    subject, agreement = _en_subject(rng)
    transitive = rng.random() < 0.65
    base, past = rng.choice(EN_TRANSITIVE if transitive else EN_INTRANSITIVE)
    tense = rng.choice(("present", "past", "past", "future", "negative"))
    if tense == "present":
        verb = _en_third(base) if agreement == "third" else base
    elif tense == "past":
        verb = past
    elif tense == "future":
        verb = "will " + base
    else:
        aux = rng.choice(("did not", "will not", "does not" if agreement == "third" else "do not"))
        verb = f"{aux} {base}"
    parts = [subject, verb]
    if transitive:
        parts.append(_en_noun_phrase(rng)[0])
    if rng.random() < 0.35:
        parts.append(f"{rng.choice(EN_PREPOSITIONS)} {_en_noun_phrase(rng)[0]}")
    if rng.random() < 0.35:
        parts.append(rng.choice(EN_ADVERBS))
    return " ".join(parts)


def _en_question(rng: random.Random) -> str:
    subject, agreement = _en_subject(rng)
    base, _ = rng.choice(EN_TRANSITIVE)
    obj = _en_noun_phrase(rng)[0]
    kind = rng.randrange(5)
    if kind == 0:
        aux = rng.choice(("did", "will", "does" if agreement == "third" else "do"))
        return f"{aux} {subject} {base} {obj}"
    if kind == 1:
        return f"{rng.choice(('where', 'when', 'why', 'how'))} did {subject} {base} {obj}"
    if kind == 2:
        noun = _en_plural(rng.choice(EN_NOUNS))
        return f"how many {noun} did {subject} {base} {rng.choice(EN_ADVERBS)}"
    if kind == 3:
        be = "are" if agreement == "base" and subject != "i" else "is" if subject != "i" else "am"
        return f"{be} {subject} {rng.choice(EN_ADJECTIVES)}"
    _, past = rng.choice(EN_TRANSITIVE)
    return f"who {past} {obj}"


def _english(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.45:
        return _en_clause(rng)
    if roll < 0.65:
        return _en_question(rng)
    if roll < 0.8:
        return f"{_en_clause(rng)} {rng.choice(('and', 'but', 'because', 'while', 'so'))} {_en_clause(rng)}"
    if roll < 0.9:
        phrase, plural = _en_noun_phrase(rng)
        be = rng.choice(("were", "are")) if plural else rng.choice(("was", "is"))
        return f"{phrase} {be} {rng.choice(('very', 'not', 'so', 'always', ''))} {rng.choice(EN_ADJECTIVES)}"
    count = en_number(rng.randint(2, 9999))
    noun = _en_plural(rng.choice(EN_NOUNS))
    return f"there {rng.choice(('are', 'were'))} {count} {noun} {rng.choice(EN_PREPOSITIONS)} {_en_noun_phrase(rng)[0]}"


# ------------------------------------------------------------------------------------------ French
def _fr_nouns(block: str, gender: str) -> list[tuple[str, str]]:
    return [(word, gender) for word in _words(block)]


FR_NOUNS = _fr_nouns("""
    homme enfant garçon frère père oncle cousin voisin ami professeur médecin boulanger marin soldat
    chanteur peintre écrivain roi président ministre chien chat cheval oiseau lapin renard loup ours
    lion poisson mouton canard serpent pain fromage café gâteau citron oeuf beurre sucre livre papier
    crayon tableau téléphone ordinateur journal miroir verre panier sac billet manteau chapeau
    bateau train avion vélo camion moteur matin soir hiver été printemps automne anniversaire mois
    jour an lac désert ciel nuage orage vent soleil marché magasin hôpital musée théâtre hôtel
    bureau village pont jardin chemin château pays gouvernement discours voyage problème projet
    message secret rêve jeu arbre mur escalier couteau stylo cadeau dimanche lundi quartier port
""", "m") + _fr_nouns("""
    maison rivière montagne ville rue route fenêtre porte table chaise cuisine école étudiante
    femme fille soeur mère tante cousine voisine amie reine famille vache chèvre grenouille souris
    pomme soupe orange tomate carotte tasse assiette boîte lettre photo radio horloge lampe bouteille
    clé robe chemise chaussure montre voiture moto fusée roue semaine année minute heure nuit forêt
    île plage mer vallée colline étoile lune neige pluie banque bibliothèque église gare usine
    chanson histoire question réponse idée leçon promesse musique science langue nation fête
    chambre place table fleur
""", "f")
FR_PLURAL = {"oeil": "yeux", "journal": "journaux", "cheval": "chevaux", "hôpital": "hôpitaux",
             "travail": "travaux", "jeu": "jeux", "feu": "feux"}
# (masculine, feminine); placed after the noun unless listed in FR_BEFORE.
FR_ADJECTIVES = [tuple(p.split("/")) for p in _words("""
    grand/grande petit/petite jeune/jeune vieux/vieille beau/belle nouveau/nouvelle bon/bonne
    mauvais/mauvaise joli/jolie long/longue court/courte
    heureux/heureuse triste/triste calme/calme froid/froide chaud/chaude rapide/rapide lent/lente
    fort/forte faible/faible riche/riche pauvre/pauvre propre/propre sale/sale plein/pleine vide/vide
    lourd/lourde léger/légère content/contente fatigué/fatiguée célèbre/célèbre étrange/étrange
    gentil/gentille drôle/drôle courageux/courageuse curieux/curieuse prudent/prudente
    rouge/rouge vert/verte bleu/bleue jaune/jaune blanc/blanche noir/noire gris/grise
    moderne/moderne ancien/ancienne simple/simple difficile/difficile facile/facile
    important/importante dangereux/dangereuse tranquille/tranquille merveilleux/merveilleuse
    profond/profonde étroit/étroite large/large doux/douce sérieux/sérieuse
""")]
FR_BEFORE = {"grand", "petit", "jeune", "vieux", "beau", "nouveau", "bon", "mauvais", "joli", "long"}
FR_ADJ_PLURAL_M = {"beau": "beaux", "nouveau": "nouveaux", "vieux": "vieux"}
FR_ADVERBS = _words("""
    souvent toujours parfois rarement aujourd'hui hier demain encore déjà bientôt soudain enfin
    lentement rapidement doucement tranquillement ensemble seul ici maintenant vraiment bien mal
    tôt tard beaucoup
""")
FR_PREPOSITIONS = _words("dans sur sous devant derrière près avec sans après avant pour chez")
FR_NAMES = _words("marie pierre jean sophie luc camille julien claire antoine louise paul chloé "
                  "nicolas léa hugo manon thomas emma victor jeanne")
# Persons: 0 je, 1 tu, 2 il/elle/on, 3 nous, 4 vous, 5 ils/elles.
FR_PRONOUNS = [("je", 0), ("tu", 1), ("il", 2), ("elle", 2), ("on", 2), ("nous", 3), ("vous", 4),
               ("ils", 5), ("elles", 5)]
FR_AVOIR = ("ai", "as", "a", "avons", "avez", "ont")
FR_ALLER = ("vais", "vas", "va", "allons", "allez", "vont")
FR_REGULAR_TRANSITIVE = _words("""
    regarder aimer chercher trouver donner porter montrer écouter préparer visiter quitter garder
    laver oublier apporter demander raconter expliquer dessiner réparer cacher fermer écouter
    inviter attraper cuisiner manger ranger décorer compter présenter accepter détester
""")
FR_REGULAR_INTRANSITIVE = _words("marcher travailler chanter danser parler rêver nager jouer voyager "
                                 "pleurer crier sauter rire")
# infinitive: (six present forms, past participle)
FR_IRREGULAR = {
    "faire": ("fais fais fait faisons faites font", "fait"),
    "prendre": ("prends prends prend prenons prenez prennent", "pris"),
    "voir": ("vois vois voit voyons voyez voient", "vu"),
    "lire": ("lis lis lit lisons lisez lisent", "lu"),
    "écrire": ("écris écris écrit écrivons écrivez écrivent", "écrit"),
    "vendre": ("vends vends vend vendons vendez vendent", "vendu"),
    "attendre": ("attends attends attend attendons attendez attendent", "attendu"),
    "perdre": ("perds perds perd perdons perdez perdent", "perdu"),
    "entendre": ("entends entends entend entendons entendez entendent", "entendu"),
    "finir": ("finis finis finit finissons finissez finissent", "fini"),
    "choisir": ("choisis choisis choisit choisissons choisissez choisissent", "choisi"),
    "construire": ("construis construis construit construisons construisez construisent", "construit"),
    "ouvrir": ("ouvre ouvres ouvre ouvrons ouvrez ouvrent", "ouvert"),
    "boire": ("bois bois boit buvons buvez boivent", "bu"),
    "mettre": ("mets mets met mettons mettez mettent", "mis"),
    "connaître": ("connais connais connaît connaissons connaissez connaissent", "connu"),
    "rire": ("ris ris rit rions riez rient", "ri"),
}
FR_ONES = _words("zéro un deux trois quatre cinq six sept huit neuf dix onze douze treize quatorze "
                 "quinze seize dix-sept dix-huit dix-neuf")
FR_TENS = _words("_ _ vingt trente quarante cinquante soixante")


def fr_number(n: int) -> str:
    if n < 20:
        return FR_ONES[n]
    if n < 70:
        tens, unit = divmod(n, 10)
        word = FR_TENS[tens]
        return word if unit == 0 else f"{word} et un" if unit == 1 else f"{word}-{FR_ONES[unit]}"
    if n < 80:
        return "soixante et onze" if n == 71 else f"soixante-{fr_number(n - 60)}"
    if n < 100:
        return "quatre-vingts" if n == 80 else f"quatre-vingt-{fr_number(n - 80)}"
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        head = "cent" if hundreds == 1 else f"{FR_ONES[hundreds]} cent" + ("s" if rest == 0 else "")
        return head if rest == 0 else f"{head} {fr_number(rest)}"
    thousands, rest = divmod(n, 1000)
    head = "mille" if thousands == 1 else f"{fr_number(thousands)} mille"
    return head if rest == 0 else f"{head} {fr_number(rest)}"


def _elide(text: str) -> str:
    """French elision: le/la/de/je/ne/que + vowel -> l'/d'/j'/n'/qu'; de le -> du, à le -> au."""
    text = re.sub(r"\b(le|la|de|je|ne|que|se) (?=[" + VOWELS + "])", lambda m: m.group(1)[:-1] + "'", text)
    text = re.sub(r"\bde le\b", "du", text)
    text = re.sub(r"\bde les\b", "des", text)
    return re.sub(r"\bà le\b", "au", text)


def _fr_plural(word: str) -> str:
    if word in FR_PLURAL:
        return FR_PLURAL[word]
    if word.endswith(("s", "x", "z")):
        return word
    return word + ("x" if word.endswith(("eau", "eu")) else "s")


def _fr_noun_phrase(rng: random.Random) -> tuple[str, int]:
    """A noun phrase and its verb person (2 singular, 5 plural)."""
    noun, gender = rng.choice(FR_NOUNS)
    plural = rng.random() < 0.35
    adjective = rng.choice(FR_ADJECTIVES) if rng.random() < 0.55 else None
    words = [_fr_plural(noun) if plural else noun]
    if adjective:
        form = adjective[0] if gender == "m" else adjective[1]
        if plural:
            form = FR_ADJ_PLURAL_M.get(form, _fr_plural(form)) if gender == "m" else _fr_plural(form)
        if rng.random() < 0.15:
            form = rng.choice(("très", "assez", "trop")) + " " + form
        words = [form, *words] if adjective[0] in FR_BEFORE else [*words, form]
    if plural:
        det = rng.choice(("les", "les", "des", "ces", "mes", "nos", "leurs", "quelques", "number"))
        if det == "number":
            det = fr_number(rng.choice((rng.randint(2, 20), rng.randint(2, 999))))
    else:
        det = rng.choice(("le", "le", "un", "ce", "mon", "notre", "leur", "chaque"))
        det = {"le": "la", "un": "une", "ce": "cette", "mon": "ma"}.get(det, det) if gender == "f" else det
        if det == "ce" and words[0][0] in VOWELS:
            det = "cet"
        if det == "ma" and words[0][0] in VOWELS:
            det = "mon"
    return " ".join([det, *words]), 5 if plural else 2


def _fr_present(verb: str, person: int) -> str:
    if verb in FR_IRREGULAR:
        return FR_IRREGULAR[verb][0].split()[person]
    stem = verb[:-2]
    if person == 3 and stem.endswith("g"):
        stem += "e"
    return stem + ("e", "es", "e", "ons", "ez", "ent")[person]


def _fr_participle(verb: str) -> str:
    return FR_IRREGULAR[verb][1] if verb in FR_IRREGULAR else verb[:-2] + "é"


def _fr_clause(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.35:
        subject, person = rng.choice(FR_PRONOUNS)
    elif roll < 0.5:
        subject, person = rng.choice(FR_NAMES), 2
    else:
        subject, person = _fr_noun_phrase(rng)
    transitive = rng.random() < 0.65
    pool = FR_REGULAR_TRANSITIVE + list(FR_IRREGULAR) if transitive else FR_REGULAR_INTRANSITIVE
    verb = rng.choice(pool)
    tense = rng.choice(("present", "past", "past", "future"))
    if tense == "present":
        head, tail = _fr_present(verb, person), ""
    elif tense == "past":
        head, tail = FR_AVOIR[person], _fr_participle(verb)
    else:
        head, tail = FR_ALLER[person], verb
    if rng.random() < 0.2:
        head = f"ne {head} pas"
    parts = [subject, head, tail]
    if transitive:
        parts.append(_fr_noun_phrase(rng)[0])
    if rng.random() < 0.35:
        parts.append(f"{rng.choice(FR_PREPOSITIONS)} {_fr_noun_phrase(rng)[0]}")
    if rng.random() < 0.35:
        parts.append(rng.choice(FR_ADVERBS))
    return " ".join(part for part in parts if part)


def _french(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.45:
        text = _fr_clause(rng)
    elif roll < 0.55:
        text = f"est-ce que {_fr_clause(rng)}"
    elif roll < 0.65:
        text = f"{rng.choice(('pourquoi', 'quand', 'comment', 'où'))} est-ce que {_fr_clause(rng)}"
    elif roll < 0.8:
        text = f"{_fr_clause(rng)} {rng.choice(('et', 'mais', 'parce que', 'pendant que', 'donc'))} {_fr_clause(rng)}"
    elif roll < 0.9:
        noun, _ = rng.choice(FR_NOUNS)
        place = f"{rng.choice(FR_PREPOSITIONS)} {_fr_noun_phrase(rng)[0]}"
        text = f"il y a {fr_number(rng.randint(2, 9999))} {_fr_plural(noun)} {place}"
    else:
        subject, person = _fr_noun_phrase(rng)
        be = ("est", "sont")[person == 5] if rng.random() < 0.5 else ("était", "étaient")[person == 5]
        text = f"{subject} {be} {rng.choice(('très', 'vraiment', 'pas', ''))} {rng.choice(FR_ADJECTIVES)[0]}"
    return _elide(normalize(text))
