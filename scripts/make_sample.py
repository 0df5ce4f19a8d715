"""Writes the bundled default corpus in data/sample/ (deterministic; run from the repo root).

conversations.jsonl: short, clean English chats (greetings, everyday questions, simple facts,
short explanations), in OpenAI `messages` form with a domain in `meta`.
instructions.json: instruction/response records (Alpaca-style, with a `category`).
Everything here was written for chatforge.
"""
import json
import random

rng = random.Random(7)
convs = []


def chat(domain, *turns, system=None):
    msgs = [{"role": "system", "content": system}] if system else []
    for i, t in enumerate(turns):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": t})
    convs.append({"messages": msgs, "meta": {"domain": domain}})


# --- greetings and small talk -------------------------------------------------------------
hellos = ["Hi!", "Hello!", "Hey there.", "Good morning!", "Good afternoon.", "Good evening!", "Hi, how are you?",
          "Hello, is anyone there?", "Hey! How is it going?", "Morning!"]
replies = ["Hello! How can I help you today?", "Hi there! What can I do for you?",
           "Hey! I'm here and happy to help. What's on your mind?", "Good to see you! How can I help?",
           "Hello! Ask me anything you like."]
howare = ["I'm doing well, thank you for asking. How are you?", "I'm fine, thanks! What would you like to talk about?"]
for h in hellos:
    for r in rng.sample(replies, 3):
        if "how are you" in h.lower() or "how is it going" in h.lower():
            r = rng.choice(howare)
        chat("greetings", h, r)
thanks = ["Thanks!", "Thank you so much.", "Great, thanks for the help.", "That helps, thank you."]
welcomes = ["You're welcome!", "Happy to help!", "Any time. Have a good day!", "Glad I could help."]
byes = ["Bye!", "Goodbye, see you later.", "I have to go now. Bye!", "Good night!"]
farewells = ["Goodbye! Take care.", "See you later!", "Bye for now. Have a great day!", "Good night, sleep well."]
for t in thanks:
    for w in rng.sample(welcomes, 2):
        chat("greetings", t, w)
for b in byes:
    for f in rng.sample(farewells, 2):
        chat("greetings", b, f)
names = ["Anna", "Ben", "Carla", "David", "Emma", "Felix", "Grace", "Hugo", "Ines", "Jack", "Kira", "Liam"]
for n in names:
    chat("greetings", f"Hi, my name is {n}.", f"Nice to meet you, {n}! How can I help you today?",
         "What is your name?", "I'm chatforge's assistant, a small model trained on this machine.")

# --- geography ------------------------------------------------------------------------------
countries = [("France", "Paris", "French", "Europe"), ("Germany", "Berlin", "German", "Europe"),
             ("Italy", "Rome", "Italian", "Europe"), ("Spain", "Madrid", "Spanish", "Europe"),
             ("Portugal", "Lisbon", "Portuguese", "Europe"), ("Japan", "Tokyo", "Japanese", "Asia"),
             ("China", "Beijing", "Mandarin Chinese", "Asia"), ("India", "New Delhi", "Hindi and English", "Asia"),
             ("Egypt", "Cairo", "Arabic", "Africa"), ("Kenya", "Nairobi", "Swahili and English", "Africa"),
             ("Brazil", "Brasilia", "Portuguese", "South America"), ("Argentina", "Buenos Aires", "Spanish", "South America"),
             ("Peru", "Lima", "Spanish", "South America"), ("Canada", "Ottawa", "English and French", "North America"),
             ("Mexico", "Mexico City", "Spanish", "North America"), ("Australia", "Canberra", "English", "Oceania"),
             ("Norway", "Oslo", "Norwegian", "Europe"), ("Sweden", "Stockholm", "Swedish", "Europe"),
             ("Finland", "Helsinki", "Finnish and Swedish", "Europe"), ("Greece", "Athens", "Greek", "Europe"),
             ("Poland", "Warsaw", "Polish", "Europe"), ("Ireland", "Dublin", "Irish and English", "Europe"),
             ("Turkey", "Ankara", "Turkish", "Asia"), ("Thailand", "Bangkok", "Thai", "Asia"),
             ("Vietnam", "Hanoi", "Vietnamese", "Asia"), ("South Korea", "Seoul", "Korean", "Asia"),
             ("Morocco", "Rabat", "Arabic and Berber", "Africa"), ("Ghana", "Accra", "English", "Africa"),
             ("Chile", "Santiago", "Spanish", "South America"), ("New Zealand", "Wellington", "English and Maori", "Oceania"),
             ("Austria", "Vienna", "German", "Europe"), ("Netherlands", "Amsterdam", "Dutch", "Europe"),
             ("Belgium", "Brussels", "Dutch, French and German", "Europe"), ("Denmark", "Copenhagen", "Danish", "Europe"),
             ("Hungary", "Budapest", "Hungarian", "Europe"), ("Iceland", "Reykjavik", "Icelandic", "Europe")]
cap_q = ["What is the capital of {c}?", "What's the capital city of {c}?", "Which city is the capital of {c}?",
         "Tell me the capital of {c}."]
for c, cap, lang, cont in countries:
    q = rng.choice(cap_q).format(c=c)
    if rng.random() < 0.5:
        chat("geography", q, f"The capital of {c} is {cap}.")
    else:
        chat("geography", q, f"The capital of {c} is {cap}.",
             "What language do people speak there?", f"In {c}, people mainly speak {lang}.")
    chat("geography", f"Which continent is {c} in?", f"{c} is in {cont}.")
    chat("geography", f"{cap} is the capital of which country?", f"{cap} is the capital of {c}.")

# --- animals --------------------------------------------------------------------------------
animals = [("dog", 4, "barks", "lives with people all over the world", "meat and dog food"),
           ("cat", 4, "meows", "lives with people all over the world", "meat and fish"),
           ("cow", 4, "moos", "lives on farms and in fields", "grass"),
           ("sheep", 4, "bleats", "lives on farms and hills", "grass"),
           ("horse", 4, "neighs", "lives on farms and open plains", "grass and hay"),
           ("duck", 2, "quacks", "lives near ponds, lakes and rivers", "plants, seeds and small insects"),
           ("chicken", 2, "clucks", "lives on farms", "seeds, grains and insects"),
           ("lion", 4, "roars", "lives in the grasslands of Africa", "meat"),
           ("elephant", 4, "trumpets", "lives in Africa and Asia", "grass, leaves and fruit"),
           ("frog", 4, "croaks", "lives near water", "insects"),
           ("owl", 2, "hoots", "lives in forests and fields", "mice and insects"),
           ("snake", 0, "hisses", "lives in many warm places", "small animals"),
           ("bee", 6, "buzzes", "lives in hives", "nectar and pollen"),
           ("spider", 8, "makes no sound we can hear", "lives almost everywhere", "insects"),
           ("wolf", 4, "howls", "lives in forests and mountains", "meat"),
           ("pig", 4, "oinks", "lives on farms", "almost anything"),
           ("goat", 4, "bleats", "lives on farms and mountains", "grass and leaves"),
           ("mouse", 4, "squeaks", "lives in fields and houses", "seeds and grains"),
           ("penguin", 2, "squawks", "lives in the southern half of the world, mostly near Antarctica", "fish"),
           ("dolphin", 0, "clicks and whistles", "lives in the sea", "fish and squid"),
           ("rabbit", 4, "is mostly quiet", "lives in fields and meadows", "grass and vegetables"),
           ("bear", 4, "growls", "lives in forests and mountains", "berries, fish and honey"),
           ("crow", 2, "caws", "lives almost everywhere", "almost anything"),
           ("ant", 6, "makes no sound we can hear", "lives in colonies underground", "seeds, sugar and insects")]
for a, legs, sound, home, food in animals:
    leg_text = "no legs" if legs == 0 else f"{legs} legs"
    chat("animals", f"How many legs does a {a} have?", f"A {a} has {leg_text}.")
    s = f"A {a} {sound}." if not sound.startswith("makes") and not sound.startswith("is") else f"A {a} {sound}."
    chat("animals", f"What sound does a {a} make?", s)
    chat("animals", f"Where does a {a} live?", f"A {a} {home}.", f"What does it eat?", f"A {a} eats {food}.")

# --- arithmetic -----------------------------------------------------------------------------
words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
for _ in range(70):
    a, b = rng.randint(1, 12), rng.randint(1, 12)
    op = rng.choice(["plus", "times", "minus"])
    if op == "minus" and b > a:
        a, b = b, a
    r = a + b if op == "plus" else a * b if op == "times" else a - b
    form = rng.choice(["What is {a} {op} {b}?", "Can you work out {a} {op} {b}?", "{a} {op} {b} equals what?"])
    chat("math", form.format(a=a, op=op, b=b), f"{a} {op} {b} is {r}.")
for n in range(1, 13):
    chat("math", f"What is {n} squared?", f"{n} squared is {n * n}, because {n} times {n} is {n * n}.")
    chat("math", f"How do you write {n} in words?", f"{n} is written as \"{words[n]}\".")
for n in [2, 3, 4, 5, 6, 7, 9, 10, 12, 15, 20, 25]:
    chat("math", f"Is {n} an even number?",
         f"Yes, {n} is even because it can be divided by two." if n % 2 == 0 else f"No, {n} is odd because it cannot be divided evenly by two.")

# --- everyday knowledge -----------------------------------------------------------------------
days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
for i, d in enumerate(days):
    chat("calendar", f"What day comes after {d}?", f"{days[(i + 1) % 7]} comes after {d}.")
    chat("calendar", f"What day comes before {d}?", f"{days[(i - 1) % 7]} comes before {d}.")
months = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
month_days = [31, "28, or 29 in a leap year", 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
for i, m in enumerate(months):
    chat("calendar", f"How many days are in {m}?", f"{m} has {month_days[i]} days.")
    chat("calendar", f"Which month comes after {m}?", f"{months[(i + 1) % 12]} comes after {m}.")
facts = [("How many days are in a week?", "There are seven days in a week."),
         ("How many hours are in a day?", "There are 24 hours in a day."),
         ("How many minutes are in an hour?", "There are 60 minutes in an hour."),
         ("How many seconds are in a minute?", "There are 60 seconds in a minute."),
         ("How many months are in a year?", "There are twelve months in a year."),
         ("How many days are in a year?", "A year has 365 days, or 366 in a leap year."),
         ("What is a leap year?", "A leap year has an extra day, February 29, and comes every four years."),
         ("How many centimeters are in a meter?", "There are 100 centimeters in a meter."),
         ("How many meters are in a kilometer?", "There are 1,000 meters in a kilometer."),
         ("How many grams are in a kilogram?", "There are 1,000 grams in a kilogram."),
         ("At what temperature does water freeze?", "Water freezes at 0 degrees Celsius, which is 32 degrees Fahrenheit."),
         ("At what temperature does water boil?", "At sea level, water boils at 100 degrees Celsius."),
         ("What is the largest planet?", "Jupiter is the largest planet in our solar system."),
         ("What is the closest star to Earth?", "The Sun is the closest star to Earth."),
         ("How many planets are in the solar system?", "There are eight planets in our solar system."),
         ("What is the largest ocean?", "The Pacific Ocean is the largest ocean on Earth."),
         ("What is the tallest mountain?", "Mount Everest is the tallest mountain above sea level."),
         ("What do bees make?", "Bees make honey and wax."),
         ("What color is the sky on a clear day?", "On a clear day the sky is blue."),
         ("What color are leaves in summer?", "Most leaves are green in summer."),
         ("How many colors are in a rainbow?", "A rainbow is usually described with seven colors."),
         ("What is ice?", "Ice is water that has frozen into a solid."),
         ("What is the opposite of hot?", "The opposite of hot is cold."),
         ("What is the opposite of big?", "The opposite of big is small."),
         ("What is the opposite of fast?", "The opposite of fast is slow."),
         ("What is the opposite of happy?", "The opposite of happy is sad."),
         ("What is the opposite of up?", "The opposite of up is down."),
         ("What is the opposite of early?", "The opposite of early is late."),
         ("What do you call a baby cat?", "A baby cat is called a kitten."),
         ("What do you call a baby dog?", "A baby dog is called a puppy."),
         ("What do you call a baby cow?", "A baby cow is called a calf."),
         ("What do you call a baby sheep?", "A baby sheep is called a lamb."),
         ("What do you call a baby horse?", "A baby horse is called a foal."),
         ("What do you call a baby duck?", "A baby duck is called a duckling.")]
for q, a in facts:
    chat("facts", q, a)
colors = [("red", "yellow", "orange"), ("blue", "yellow", "green"), ("red", "blue", "purple"),
          ("red", "white", "pink"), ("black", "white", "gray"), ("blue", "white", "light blue")]
for x, y, z in colors:
    chat("colors", f"What do you get if you mix {x} and {y}?", f"Mixing {x} and {y} gives you {z}.")
    chat("colors", f"Which two colors make {z}?", f"You can make {z} by mixing {x} and {y}.")

# --- short explanations -----------------------------------------------------------------------
explain = [
    ("Why does it rain?", "Water evaporates from seas and lakes, rises, and cools into clouds. When the droplets in a cloud grow heavy, they fall as rain."),
    ("How does a rainbow form?", "Sunlight enters raindrops, bends, and splits into its colors. Each drop sends a little of each color back to your eyes, so you see a bow of colors."),
    ("Why do we have seasons?", "The Earth is tilted. As it goes around the Sun, each half of the planet leans toward the Sun for part of the year, which brings summer, and away from it, which brings winter."),
    ("What is gravity?", "Gravity is the pull that every mass has on every other mass. It keeps us on the ground and keeps the Moon going around the Earth."),
    ("How do plants make food?", "Plants use sunlight, water and carbon dioxide to make sugar. This is called photosynthesis, and it also releases oxygen."),
    ("Why is the sea salty?", "Rivers carry tiny amounts of salt from rocks into the sea. The water evaporates, but the salt stays behind and builds up over time."),
    ("What causes tides?", "The Moon's gravity pulls on the oceans, making the water bulge. As the Earth turns, the bulge moves, and the sea rises and falls."),
    ("What is a volcano?", "A volcano is an opening in the Earth's crust where melted rock, gas and ash escape from deep below the surface."),
    ("Why do leaves change color in autumn?", "In autumn, trees stop making the green pigment in their leaves. As the green fades, yellow and orange colors that were hidden show through."),
    ("How does a refrigerator keep food cold?", "A refrigerator pumps a special fluid that takes heat from inside the box and releases it outside, at the back."),
    ("What is electricity?", "Electricity is the flow of tiny charged particles called electrons. That flow can power lights, motors and computers."),
    ("How do birds fly?", "Birds flap their wings to push air down and back. The shape of the wing also creates lift, which holds the bird up."),
    ("Why do we need sleep?", "Sleep lets the body repair itself and helps the brain store memories. Without enough sleep it is hard to think clearly."),
    ("What is a computer?", "A computer is a machine that follows instructions, called programs, to store and work with information very quickly."),
    ("What is the internet?", "The internet is a huge network that connects computers around the world so they can share information."),
    ("Why is exercise good for you?", "Exercise makes the heart and muscles stronger, improves sleep and mood, and helps keep a healthy weight."),
    ("What is an atom?", "An atom is the smallest piece of a chemical element. Everything around us is made of atoms."),
    ("How does a compass work?", "A compass needle is a small magnet. It lines up with the Earth's magnetic field, so one end points north."),
    ("What is a language model?", "A language model is a program that learns patterns in text so it can predict the next word. Chat models are language models trained on conversations."),
    ("What is a tokenizer?", "A tokenizer splits text into small pieces called tokens and turns them into numbers that a model can work with."),
    ("Why is the Moon sometimes a crescent?", "The Moon reflects sunlight. As it goes around the Earth we see different amounts of its lit half, from a thin crescent to a full moon."),
    ("How do clouds float?", "Clouds are made of very tiny water droplets. They are so small and light that rising air keeps them up."),
    ("What is thunder?", "Thunder is the sound of air heating and expanding very quickly around a flash of lightning."),
    ("Why do cats purr?", "Cats often purr when they are relaxed and happy, but they may also purr to calm themselves when they are hurt or scared."),
]
for q, a in explain:
    chat("science", q, a)
    chat("science", q, a, "Can you say that more simply?", a.split(". ")[0].rstrip(".") + ".")

# --- everyday advice ---------------------------------------------------------------------------
advice = [
    ("How do I make a cup of tea?", "Boil some water, pour it over a tea bag in a cup, wait three to five minutes, then take out the bag. Add milk or sugar if you like."),
    ("How do I boil an egg?", "Put the egg in boiling water. Cook it for about six minutes for a soft yolk or nine minutes for a hard one, then cool it in cold water."),
    ("How can I sleep better?", "Go to bed at the same time each night, keep your room dark and cool, and put screens away an hour before sleep."),
    ("How can I stay focused while studying?", "Work in short blocks of about 25 minutes, take small breaks, and keep your phone in another room."),
    ("What should I pack for a day hike?", "Bring water, snacks, a map, sunscreen, a warm layer and a small first aid kit."),
    ("How do I keep a plant alive?", "Give it enough light, water it when the top of the soil feels dry, and do not let it sit in water."),
    ("How can I save money?", "Write down what you spend, set a small amount aside each week, and wait a day before buying things you do not need."),
    ("How do I make a simple salad?", "Wash some lettuce, add sliced tomato and cucumber, and dress it with olive oil, lemon juice and a pinch of salt."),
    ("How can I learn a new language?", "Practice a little every day, learn common words first, listen to native speakers, and try to speak even when you make mistakes."),
    ("What can I do when I feel stressed?", "Take a few slow breaths, go for a short walk, and talk to someone you trust. Breaking a big task into small steps also helps."),
    ("How do I write a good email?", "Use a clear subject, say what you need in the first lines, keep it short, and end with a polite thank you."),
    ("How do I clean a window without streaks?", "Use warm water with a little dish soap, wipe with a squeegee or a dry cloth, and avoid cleaning in bright sunlight."),
    ("How do I start running?", "Begin with short runs mixed with walking, go slowly enough to talk, and add a few minutes each week."),
    ("How often should I drink water?", "Drink water regularly through the day, and more when it is hot or when you exercise. A good sign is pale yellow urine."),
    ("How can I remember names better?", "Repeat the name when you hear it, use it once in the conversation, and link it to something you notice about the person."),
    ("What is a good breakfast?", "A good breakfast mixes protein and fiber, for example oatmeal with fruit and nuts, or eggs with whole grain toast."),
]
for q, a in advice:
    chat("advice", q, a)
    chat("advice", q, a, "Thanks, that is helpful.", rng.choice(welcomes))
for n in rng.sample(names, 8):
    q, a = rng.choice(advice)
    chat("advice", f"Hi, I'm {n}. {q}", f"Hi {n}! {a}")
helpful = "You are a friendly assistant. Keep answers short and clear."
for q, a in rng.sample(explain, 10) + rng.sample(advice, 8):
    chat("science" if (q, a) in explain else "advice", q, a, system=helpful)

rng.shuffle(convs)
with open("data/sample/conversations.jsonl", "w", encoding="utf-8") as f:
    for c in convs:
        f.write(json.dumps(c, ensure_ascii=False) + "\n")

# --- instruction records ------------------------------------------------------------------------
records = []
french = {"hello": "bonjour", "thank you": "merci", "good night": "bonne nuit", "cat": "chat", "dog": "chien",
          "water": "eau", "bread": "pain", "house": "maison", "apple": "pomme", "friend": "ami", "book": "livre",
          "sun": "soleil", "yes": "oui", "no": "non", "please": "s'il vous plait", "goodbye": "au revoir"}
spanish = {"hello": "hola", "thank you": "gracias", "good night": "buenas noches", "cat": "gato", "dog": "perro",
           "water": "agua", "bread": "pan", "house": "casa", "apple": "manzana", "friend": "amigo", "book": "libro",
           "sun": "sol", "yes": "si", "no": "no", "please": "por favor", "goodbye": "adios"}
for w, f in french.items():
    records.append({"instruction": "Translate the word into French.", "input": w, "output": f"\"{w}\" in French is \"{f}\".", "category": "translation"})
for w, s in spanish.items():
    records.append({"instruction": "Translate the word into Spanish.", "input": w, "output": f"\"{w}\" in Spanish is \"{s}\".", "category": "translation"})
synonyms = {"happy": "glad", "big": "large", "small": "little", "fast": "quick", "smart": "clever", "begin": "start",
            "end": "finish", "angry": "mad", "tired": "sleepy", "easy": "simple", "hard": "difficult", "pretty": "lovely",
            "shout": "yell", "look": "see", "answer": "reply", "rich": "wealthy", "scared": "afraid", "close": "near"}
for w, s in synonyms.items():
    records.append({"instruction": f"Give a synonym for \"{w}\".", "input": "", "output": f"A synonym for \"{w}\" is \"{s}\".", "category": "words"})
plurals = {"cat": "cats", "box": "boxes", "child": "children", "mouse": "mice", "foot": "feet", "baby": "babies",
           "leaf": "leaves", "tooth": "teeth", "city": "cities", "bus": "buses", "man": "men", "sheep": "sheep",
           "person": "people", "knife": "knives", "story": "stories", "goose": "geese"}
for w, p in plurals.items():
    records.append({"instruction": f"What is the plural of \"{w}\"?", "input": "", "output": f"The plural of \"{w}\" is \"{p}\".", "category": "words"})
kinds = {"apple": "a fruit", "banana": "a fruit", "cherry": "a fruit", "carrot": "a vegetable", "potato": "a vegetable",
         "onion": "a vegetable", "car": "a vehicle", "bicycle": "a vehicle", "train": "a vehicle", "boat": "a vehicle",
         "rose": "a flower", "tulip": "a flower", "daisy": "a flower", "oak": "a tree", "pine": "a tree", "maple": "a tree",
         "salmon": "a fish", "trout": "a fish", "eagle": "a bird", "sparrow": "a bird", "robin": "a bird", "piano": "an instrument",
         "guitar": "an instrument", "violin": "an instrument", "drum": "an instrument"}
for w, k in kinds.items():
    records.append({"instruction": "Classify the item.", "input": w, "output": f"{w.capitalize()} is {k}.", "category": "classification"})
groups = {"fruits": ["apples", "pears", "grapes", "plums", "oranges", "mangoes"],
          "colors": ["red", "blue", "green", "yellow", "purple", "orange"],
          "animals that live in the sea": ["whales", "dolphins", "octopuses", "sharks", "crabs", "seals"],
          "musical instruments": ["the piano", "the guitar", "the violin", "the flute", "the drums", "the trumpet"],
          "vegetables": ["carrots", "peas", "spinach", "broccoli", "onions", "beans"],
          "things you find in a kitchen": ["a kettle", "a pan", "a fork", "a cutting board", "a fridge", "an oven"],
          "planets": ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn"],
          "sports": ["football", "tennis", "swimming", "basketball", "cycling", "running"]}
for g, items in groups.items():
    for _ in range(4):
        a, b, c = rng.sample(items, 3)
        records.append({"instruction": f"Name three {g}.", "input": "", "output": f"Three {g} are {a}, {b} and {c}.", "category": "lists"})
for _ in range(40):
    nums = rng.sample(range(1, 60), rng.randint(3, 5))
    records.append({"instruction": "Sort these numbers from smallest to largest.", "input": ", ".join(map(str, nums)),
                    "output": ", ".join(map(str, sorted(nums))), "category": "math"})
for _ in range(30):
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    records.append({"instruction": "Add the two numbers.", "input": f"{a} and {b}", "output": f"{a} + {b} = {a + b}", "category": "math"})
for w in ["apple", "river", "garden", "window", "pencil", "friend", "music", "yellow", "ocean", "kitchen", "winter", "planet", "bread", "school", "clock"]:
    records.append({"instruction": f"How many letters are in the word \"{w}\"?", "input": "", "output": f"The word \"{w}\" has {len(w)} letters.", "category": "words"})
sentences = {"dog": "The dog ran across the park to fetch the ball.", "rain": "We stayed inside because of the rain.",
             "book": "She read a book before going to sleep.", "garden": "My grandmother grows tomatoes in her garden.",
             "music": "He listens to music while he cooks.", "train": "The train left the station at nine o'clock.",
             "bread": "They bought fresh bread from the bakery.", "ocean": "The ocean was calm and blue this morning.",
             "window": "Please open the window to let in some air.", "friend": "I called my friend to wish her a happy birthday.",
             "winter": "In winter the lake freezes over.", "bicycle": "He rides his bicycle to work every day."}
for w, s in sentences.items():
    records.append({"instruction": f"Write a sentence using the word \"{w}\".", "input": "", "output": s, "category": "writing"})
for c, cap, lang, cont in countries:
    records.append({"instruction": f"What language is spoken in {c}?", "input": "", "output": f"People in {c} mainly speak {lang}.", "category": "geography"})
rewrite = [("i dont like mondays", "I don't like Mondays."), ("where is the station", "Where is the station?"),
           ("my name is anna", "My name is Anna."), ("we went to paris in june", "We went to Paris in June."),
           ("its raining again", "It's raining again."), ("can you help me", "Can you help me?"),
           ("the cat sleeps on the sofa", "The cat sleeps on the sofa."), ("what time is it", "What time is it?"),
           ("tom and ben play football", "Tom and Ben play football."), ("thank you very much", "Thank you very much.")]
for a, b in rewrite:
    records.append({"instruction": "Fix the capitalization and punctuation.", "input": a, "output": b, "category": "writing"})
rng.shuffle(records)
with open("data/sample/instructions.json", "w", encoding="utf-8") as f:
    json.dump(records, f, ensure_ascii=False, indent=1)
    f.write("\n")
print(len(convs), "conversations,", len(records), "instruction records")
