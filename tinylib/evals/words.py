"""Word lists for the benchmark's templates, written for this project in the vocabulary of TinyStories
(a three-year-old's words), never copied from its text. `tinylib.evals.families` fills its templates from
here.

Lists come in matched pairs (singular/plural, past/over-regularised past, girl/boy names of equal count) so
that every option is the right answer as often as it is a wrong one: a model that only knows which words are
frequent (the unigram floor) then scores chance.
"""

from __future__ import annotations

GIRLS = ("Lily", "Mia", "Sue", "Amy", "Anna", "Emma", "Lucy", "Sara", "Kate", "Zoe", "Ella", "Rosie")
BOYS = ("Tom", "Ben", "Tim", "Max", "Sam", "Jack", "Leo", "Jake", "Bob", "Joe", "Finn", "Ollie")

PRONOUNS = {  # subject, object, possessive
    "girl": ("she", "her", "her"),
    "boy": ("he", "him", "his"),
}

# (singular, plural): regular enough to read, irregular enough (puppy/puppies, fox/foxes) to need knowing
ANIMALS = (("dog", "dogs"), ("cat", "cats"), ("bird", "birds"), ("bunny", "bunnies"), ("frog", "frogs"),
           ("duck", "ducks"), ("puppy", "puppies"), ("bear", "bears"), ("fox", "foxes"),
           ("kitten", "kittens"),
           ("horse", "horses"), ("mouse", "mice"))
THINGS = (("tree", "trees"), ("house", "houses"), ("box", "boxes"), ("car", "cars"), ("flower", "flowers"),
          ("rock", "rocks"), ("bench", "benches"), ("fence", "fences"))
COPULA = (("is", "are"), ("was", "were"))
ADJECTIVES = ("happy", "sleepy", "hungry", "little", "brown", "funny", "shy", "tired", "fluffy", "noisy")
MOODS = ("happy", "sleepy", "hungry", "tired", "shy", "sad", "cold", "busy")  # what a child can be
PLACES = ("park", "garden", "yard", "forest", "meadow", "barn", "field", "kitchen")

# (past, over-regularised past, what follows): the error small children make, "he goed"
IRREGULAR_PAST = (
    ("ate", "eated", "a green apple"), ("ran", "runned", "to the old barn"), ("saw", "seed", "a yellow bird"),
    ("went", "goed", "to the sunny beach"), ("gave", "gived", "a flower to mom"),
    ("took", "taked", "a red cup"),
    ("found", "finded", "a shiny shell"), ("made", "maked", "a tall sand castle"),
    ("drew", "drawed", "a big purple sun"), ("sang", "singed", "a silly song"),
    ("drank", "drinked", "a glass of warm milk"), ("threw", "throwed", "the blue ball"),
    ("caught", "catched", "a tiny green frog"), ("swam", "swimmed", "in the cold lake"),
    ("fell", "falled", "on the soft grass"), ("won", "winned", "the long race"),
    ("built", "builded", "a tall block tower"), ("bought", "buyed", "a new red kite"),
    ("told", "telled", "a funny joke"), ("broke", "breaked", "the old toy car"),
)

COLORS = ("red", "blue", "green", "yellow", "pink", "purple", "orange", "white")
TOYS = ("ball", "kite", "doll", "car", "drum", "boat", "hat", "book", "truck", "puppet")
HIDING = (("in the box", "box"), ("under the bed", "bed"), ("on the shelf", "shelf"),
          ("in the basket", "basket"))

FRIENDLY = ("played in the", "ran to the", "had fun in the", "walked to the")
ACTIVITIES = ("paint pictures", "sing songs", "play with blocks", "read books", "dance", "ride a bike")

# state changes: (state before, event, state after); every state is the answer as often as the distractor
STATES = (
    ("The cup was full of milk.", "{name} drank all of it. Now the cup was", " empty", " full"),
    ("The cup was empty.", "{name} filled it with milk. Now the cup was", " full", " empty"),
    ("The door was open.", "{name} closed it. Now the door was", " closed", " open"),
    ("The door was closed.", "{name} opened it. Now the door was", " open", " closed"),
    ("The room was bright.", "{name} turned off the light. Now the room was", " dark", " bright"),
    ("The room was dark.", "{name} turned on the light. Now the room was", " bright", " dark"),
    ("The shirt was clean.", "{name} played in the mud. Now the shirt was", " dirty", " clean"),
    ("The shirt was dirty.", "{name} washed it with soap. Now the shirt was", " clean", " dirty"),
    ("The towel was dry.", "{name} dropped it in the bath. Now the towel was", " wet", " dry"),
    ("The towel was wet.", "{name} left it in the sun all day. Now the towel was", " dry", " wet"),
)

# cause -> effect: "{name} was very hungry, so {subj}" + " ate a big sandwich."; other effects are distractors
CAUSES = (
    ("{name} was very hungry, so {subj}", " ate a big sandwich."),
    ("{name} was very thirsty, so {subj}", " drank a cup of water."),
    ("{name} felt cold in the snow, so {subj}", " put on a warm coat."),
    ("{name} was very sleepy, so {subj}", " went to bed."),
    ("{name} was covered in mud, so {subj}", " took a warm bath."),
    ("It started to rain, so {name}", " opened an umbrella."),
    ("The room was too dark, so {name}", " turned on the lamp."),
    ("The floor was wet and slippery, so {name}", " walked very slowly."),
    ("The sun was very hot, so {name}", " sat in the shade."),
    ("{name} lost {poss} toy, so {subj}", " looked for it everywhere."),
    ("The plant looked dry, so {name}", " gave it some water."),
    ("{name} wanted to read a story, so {subj}", " opened a book."),
    ("{name} had a cut on {poss} knee, so mom", " put on a bandage."),
    ("The toy was broken, so {name}", " fixed it with glue."),
    ("It was snowing outside, so {name}", " built a snowman."),
    ("{name} heard a knock at the door, so {subj}", " went to open it."),
)

# schema pairs: two contexts, two continuations; each continuation belongs to one context
SCHEMAS = (
    ("{name} was very hungry,", "{name} was very full,", " so {subj} ate a big bowl of soup.",
     " so {subj} did not eat any soup."),
    ("{name} was cold,", "{name} was hot,", " so {subj} put on {poss} coat.",
     " so {subj} took off {poss} coat."),
    ("{name} was sleepy,", "{name} was full of energy,", " so {subj} went to bed early.",
     " so {subj} ran around the yard."),
    ("{name} was sad,", "{name} was happy,", " so {subj} cried.", " so {subj} smiled."),
    ("{name} dropped {poss} cup,", "{name} held {poss} cup tight,", " and the milk spilled on the floor.",
     " and the milk stayed in the cup."),
    ("{name} saw dark clouds,", "{name} saw the bright sun,", " so {subj} took an umbrella.",
     " so {subj} put on {poss} sun hat."),
    ("{name} lost {poss} favorite toy,", "{name} found {poss} favorite toy,", " and {subj} felt sad.",
     " and {subj} felt happy."),
    ("The ice cream sat in the hot sun,", "The ice cream sat in the cold freezer,", " and it melted.",
     " and it stayed hard."),
)
